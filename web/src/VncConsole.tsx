/**
 * A VM's graphical console: noVNC (RFB, RFC 6143) over the server's WebSocket proxy to the
 * VM's VNC socket (src/server/console-proxy.ts), opened with a fresh single-use console token.
 * Keys a browser keeps for itself (Ctrl+Alt+Del, function keys, Ctrl+Alt+Fn to switch a Linux
 * guest's virtual terminal) have buttons; they are sent as X11 keysyms (noVNC's keysym table).
 */
import RFB from '@novnc/novnc';
import { useEffect, useRef, useState } from 'react';
import { consoleUrl } from './api';
import { ErrorMessage } from './widgets';

const XK_Control_L = 0xffe3;
const XK_Alt_L = 0xffe9;
const XK_F1 = 0xffbe; // F1..F12 are consecutive keysyms (X11 keysymdef.h)
const XK_Escape = 0xff1b;
const XK_Tab = 0xff09;

type Status = 'connecting' | 'connected' | 'disconnected';

export function VncConsole({ vm }: { vm: string }) {
  const screen = useRef<HTMLDivElement>(null);
  const rfb = useRef<RFB | null>(null);
  const [status, setStatus] = useState<Status>('connecting');
  const [reason, setReason] = useState<string>('');
  const [error, setError] = useState<unknown>(null);
  const [withCtrlAlt, setWithCtrlAlt] = useState(false);
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    let closed = false;
    setStatus('connecting');
    setError(null);
    setReason('');
    consoleUrl(vm, 'vnc').then(
      (url) => {
        if (closed || !screen.current) return;
        const r = new RFB(screen.current, url, { shared: true });
        r.scaleViewport = true;
        r.background = '#111';
        r.addEventListener('connect', () => setStatus('connected'));
        r.addEventListener('disconnect', (e) => {
          // a disconnected RFB object must not be disconnected again
          if (rfb.current === r) rfb.current = null;
          setStatus('disconnected');
          setReason((e as CustomEvent<{ clean: boolean }>).detail?.clean ? 'the console closed' : 'the connection was lost');
        });
        r.addEventListener('securityfailure', (e) => setReason(`security failure: ${(e as CustomEvent<{ reason?: string }>).detail?.reason ?? ''}`));
        rfb.current = r;
      },
      (e) => {
        if (closed) return;
        setError(e);
        setStatus('disconnected');
      },
    );
    return () => {
      closed = true;
      rfb.current?.disconnect();
      rfb.current = null;
    };
  }, [vm, attempt]);

  const fkey = (n: number) => {
    const r = rfb.current;
    if (!r) return;
    const keysym = XK_F1 + n - 1;
    if (withCtrlAlt) {
      r.sendKey(XK_Control_L, 'ControlLeft', true);
      r.sendKey(XK_Alt_L, 'AltLeft', true);
    }
    r.sendKey(keysym, `F${n}`);
    if (withCtrlAlt) {
      r.sendKey(XK_Alt_L, 'AltLeft', false);
      r.sendKey(XK_Control_L, 'ControlLeft', false);
    }
    r.focus();
  };
  const connected = status === 'connected';

  return (
    <div className="vnc">
      <div className="toolbar" role="toolbar" aria-label="special keys">
        <span className="status" role="status" data-status={status}>
          {status === 'connected' ? 'Connected' : status === 'connecting' ? 'Connecting…' : `Disconnected${reason ? `: ${reason}` : ''}`}
        </span>
        <button type="button" disabled={!connected} onClick={() => (rfb.current?.sendCtrlAltDel(), rfb.current?.focus())}>
          Ctrl+Alt+Del
        </button>
        <button type="button" disabled={!connected} onClick={() => rfb.current?.sendKey(XK_Escape, 'Escape')}>
          Esc
        </button>
        <button type="button" disabled={!connected} onClick={() => rfb.current?.sendKey(XK_Tab, 'Tab')}>
          Tab
        </button>
        <label className="inline">
          <input type="checkbox" checked={withCtrlAlt} onChange={(e) => setWithCtrlAlt(e.target.checked)} /> with Ctrl+Alt
        </label>
        {Array.from({ length: 12 }, (_, i) => (
          <button key={i} type="button" disabled={!connected} onClick={() => fkey(i + 1)} aria-label={`${withCtrlAlt ? 'Ctrl+Alt+' : ''}F${i + 1}`}>
            F{i + 1}
          </button>
        ))}
        {status === 'disconnected' && (
          <button type="button" className="primary" onClick={() => setAttempt((a) => a + 1)}>
            Reconnect
          </button>
        )}
      </div>
      <ErrorMessage error={error} />
      <div className="screen" ref={screen} aria-label={`graphical console of ${vm}`} data-testid="vnc-screen" />
    </div>
  );
}
