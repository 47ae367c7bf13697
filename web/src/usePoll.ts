/** Loads something now and again every `everyMs` while the page shows it (and the tab is visible). */
import { useCallback, useEffect, useRef, useState } from 'react';

export function usePoll<T>(load: (signal: AbortSignal) => Promise<T>, everyMs: number, deps: unknown[]): { data: T | undefined; error: unknown; reload: () => void } {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<unknown>(null);
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  const reload = useCallback(() => setTick((t) => t + 1), []);
  useEffect(() => {
    const ac = new AbortController();
    loadRef.current(ac.signal).then(
      (d) => {
        setData(d);
        setError(null);
      },
      (e) => !ac.signal.aborted && setError(e),
    );
    const timer = setTimeout(() => {
      if (document.visibilityState === 'visible') reload();
      else setTimeout(reload, everyMs);
    }, everyMs);
    return () => {
      ac.abort();
      clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [tick, everyMs, ...deps]);
  return { data, error, reload };
}
