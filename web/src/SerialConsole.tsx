/**
 * A VM's serial console: what the guest printed (the server sends its serial log's tail first)
 * and then the live bytes, both ways, over the console WebSocket (src/server/console-proxy.ts).
 * Keys typed while the console has focus go to the guest as a terminal sends them (VT100
 * sequences for the arrows); a line can also be typed and sent whole.
 */
import { useEffect, useRef, useState, type KeyboardEvent } from 'react';
import { consoleUrl } from './api';
import { ErrorMessage } from './widgets';

/** The text kept on screen (the serial log on the server keeps everything). */
const MAX_TEXT = 256 * 1024;
// CSI and OSC sequences, and other ESC pairs (ECMA-48 §5.4): a log view shows text, not cursor moves
const ESCAPES = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

const KEYS: Record<string, string> = {
  Enter: '\r',
  Backspace: '\x7f',
  Tab: '\t',
  Escape: '\x1b',
  ArrowUp: '\x1b[A',
  ArrowDown: '\x1b[B',
  ArrowRight: '\x1b[C',
  ArrowLeft: '\x1b[D',
  Home: '\x1b[H',
  End: '\x1b[F',
  Delete: '\x1b[3~',
};

type Status = 'connecting' | 'connected' | 'disconnected';

export function SerialConsole({ vm }: { vm: string }) {
  const [text, setText] = useState('');
  const [status, setStatus] = useState<Status>('connecting');
  const [error, setError] = useState<unknown>(null);
  const [line, setLine] = useState('');
  const [attempt, setAttempt] = useState(0);
  const ws = useRef<WebSocket | null>(null);
  const view = useRef<HTMLPreElement>(null);
  const follow = useRef(true);

  useEffect(() => {
    let closed = false;
    const decoder = new TextDecoder();
    setStatus('connecting');
    setError(null);
    setText('');
    consoleUrl(vm, 'serial').then(
      (url) => {
        if (closed) return;
        const s = new WebSocket(url);
        s.binaryType = 'arraybuffer';
        s.onopen = () => setStatus('connected');
        s.onmessage = (e) => {
          const chunk = typeof e.data === 'string' ? e.data : decoder.decode(new Uint8Array(e.data as ArrayBuffer), { stream: true });
          setText((t) => (t + chunk.replace(ESCAPES, '').replace(/\r(?!\n)/g, '')).slice(-MAX_TEXT));
        };
        s.onclose = () => setStatus('disconnected');
        s.onerror = () => setStatus('disconnected');
        ws.current = s;
      },
      (e) => {
        if (closed) return;
        setError(e);
        setStatus('disconnected');
      },
    );
    return () => {
      closed = true;
      ws.current?.close();
      ws.current = null;
    };
  }, [vm, attempt]);

  useEffect(() => {
    const el = view.current;
    if (el && follow.current) el.scrollTop = el.scrollHeight;
  }, [text]);

  const send = (data: string) => {
    if (ws.current?.readyState === WebSocket.OPEN) ws.current.send(new TextEncoder().encode(data));
  };
  const onKey = (e: KeyboardEvent<HTMLPreElement>) => {
    let data: string | undefined = KEYS[e.key];
    if (!data && e.ctrlKey && !e.altKey && e.key.length === 1 && /[a-z@[\\\]^_]/i.test(e.key)) data = String.fromCharCode(e.key.toUpperCase().charCodeAt(0) & 0x1f);
    else if (!data && !e.ctrlKey && !e.metaKey && e.key.length === 1) data = e.key;
    if (data === undefined) return;
    // Tab stays in the console while it has focus; Escape leaves (keyboard users must get out)
    if (e.key === 'Escape') return (e.currentTarget.blur(), undefined);
    e.preventDefault();
    send(data);
  };

  return (
    <div className="serial">
      <div className="toolbar">
        <span className="status" role="status" data-status={status}>
          {status === 'connected' ? 'Connected' : status === 'connecting' ? 'Connecting…' : 'Disconnected'}
        </span>
        {status === 'disconnected' && (
          <button type="button" className="primary" onClick={() => setAttempt((a) => a + 1)}>
            Reconnect
          </button>
        )}
        <span className="muted">Click the console and type; Esc leaves it.</span>
      </div>
      <ErrorMessage error={error} />
      <pre
        className="terminal"
        ref={view}
        tabIndex={0}
        aria-label={`serial console of ${vm}`}
        data-testid="serial-output"
        onKeyDown={onKey}
        onScroll={(e) => {
          const el = e.currentTarget;
          follow.current = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
        }}
      >
        {text}
      </pre>
      <form
        className="send-line"
        onSubmit={(e) => {
          e.preventDefault();
          send(line + '\r');
          setLine('');
        }}
      >
        <label htmlFor="serial-line">Send a line</label>
        <input id="serial-line" value={line} onChange={(e) => setLine(e.target.value)} autoComplete="off" spellCheck={false} disabled={status !== 'connected'} />
        <button type="submit" disabled={status !== 'connected'}>
          Send
        </button>
      </form>
    </div>
  );
}
