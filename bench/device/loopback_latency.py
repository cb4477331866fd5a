"""Loopback ping-pong between two processes at a paced 300/s for 3 s: the platform's own wake-up
tail (p50/p99/max round trip, and how far a 3.3 ms sleep overshoots)."""
import socket, subprocess, sys, time, statistics
if len(sys.argv) > 1:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 8997)); s.listen(1)
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (d := c.recv(64)): c.sendall(d)
    sys.exit()
p = subprocess.Popen([sys.executable, __file__, "srv"]); time.sleep(0.5)
c = socket.create_connection(("127.0.0.1", 8997)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtt, over = [], []
end = time.perf_counter() + 3
while time.perf_counter() < end:
    t = time.perf_counter(); c.sendall(b"x"); c.recv(64); rtt.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter(); time.sleep(1 / 300); over.append((time.perf_counter() - t - 1 / 300) * 1e3)
c.close(); p.wait()
q = lambda xs, f: sorted(xs)[int(f * (len(xs) - 1))]
print(f"loopback ping-pong n={len(rtt)} p50 {q(rtt,.5):.3f} ms p99 {q(rtt,.99):.3f} ms max {max(rtt):.3f} ms; "
      f"sleep(3.3ms) overshoot p50 {q(over,.5):.3f} p99 {q(over,.99):.3f} max {max(over):.3f} ms")
