#!/usr/bin/env python3
"""pty_pin.py PIN CMD...: run CMD on a new pseudo-terminal (its controlling terminal, so
its /dev/tty), wait for the "User PIN: " prompt, type PIN and Enter, and print all the
terminal showed. Exits with CMD's status; 97 when no prompt came within 30 s, 98 when the
PIN was shown on the terminal (echo was on). An empty PIN sends Ctrl-D instead."""
import os
import pty
import select
import sys
import time

pin, cmd = sys.argv[1].encode(), sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(cmd[0], cmd)

seen = b""
typed = False
deadline = time.monotonic() + 30
status = None
while time.monotonic() < deadline:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            break
        seen += chunk
    if not typed and b"User PIN: " in seen:
        os.write(fd, pin + b"\n" if pin else b"\x04")
        typed = True
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = st
        try:  # what is left on the terminal
            while select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                seen += chunk
        except OSError:
            pass
        break
if status is None:
    os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
if not typed:
    print("pty_pin: no 'User PIN: ' prompt")
    sys.exit(97)
if pin and pin in seen:
    print("pty_pin: the PIN was shown on the terminal")
    sys.exit(98)
sys.exit(os.waitstatus_to_exitcode(status))
