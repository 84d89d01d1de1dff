"""The local demo (`make demo`): a real controller and a sample organisation.

Steps, each printed as it runs:
  1. create a deployment in ./demo-data (CA, TLS certificate, SQLite in WAL mode)
  2. start `zerogate controller run` on 127.0.0.1
  3. create the first admin with the one-time bootstrap code; the demo plays
     the admin's authenticator app (it computes the TOTP codes)
  4. create a sample organisation with the `zerogate admin` CLI
  5. issue a connector install string and enroll a connector with it
  6. ask the policy engine what a user may reach, and verify the audit chain

With a terminal attached it then keeps serving until Enter or Ctrl-C, so the
API docs can be opened; otherwise it stops and cleans up by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from zerogate.controller.localrun import LocalController, zerogate_argv

ROOT = Path(__file__).resolve().parent.parent
console = Console(highlight=False, soft_wrap=True)


def step(n: int, text: str) -> None:
    console.print(f"\n[bold cyan][{n}/6][/] [bold]{text}[/]")


def cli(profile: Path, *args: str, stdin: str | None = None) -> str:
    """Run a zerogate CLI command as a user would type it, showing the command."""
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    console.print(f"  [dim]$ zerogate {shown}[/]")
    r = subprocess.run(
        [*zerogate_argv(), *args], input=stdin, capture_output=True, text=True, timeout=120,
        env=os.environ | {"ZEROGATE_PROFILE": str(profile), "COLUMNS": "120"}, check=False,
    )
    if r.returncode != 0:
        console.print(f"[red]command failed ({r.returncode}):[/]\n{r.stderr or r.stdout}")
        raise SystemExit(1)
    return r.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=ROOT / "demo-data", help="demo directory (recreated on every run)")
    parser.add_argument("--no-wait", action="store_true", help="stop at the end even with a terminal attached")
    args = parser.parse_args()
    demo: Path = args.dir.resolve()
    if demo.exists():
        console.print(f"Removing the previous demo in {demo}")
        shutil.rmtree(demo)
    demo.mkdir(parents=True)
    profile = demo / "admin-profile.json"
    started = time.monotonic()

    step(1, "Create a deployment (CA, server certificate, embedded SQLite)")
    lc = LocalController(demo / "controller", log_path=demo / "controller.log").init()
    console.print(f"  data dir {lc.data_dir}\n  CA pin   {lc.ca_pin}\n  one-time bootstrap code {lc.bootstrap_code}")

    step(2, "Start the controller (HTTPS, TLS 1.3 only)")
    with lc:
        lc.start()
        console.print(f"  listening at {lc.url}  (log: {lc.log_path})")

        step(3, "Bootstrap the first admin: password, then TOTP (the demo acts as the authenticator app)")
        admin = lc.bootstrap_admin("admin", "demo-admin-password-1")
        profile.write_text(json.dumps({"url": lc.url, "ca_pem": lc.ca_pem.decode(), "username": "admin", "token": admin.token}))
        profile.chmod(0o600)
        console.print("  admin 'admin' is active and signed in (session kept in demo-data/admin-profile.json)")

        step(4, "Create a sample organisation with the admin CLI")
        cli(profile, "admin", "connector-group", "create", "branch-office", "--subnet", "10.1.0.0/24", "--json")
        cli(profile, "admin", "application", "create", "intranet-web", "--connector-group", "branch-office",
            "--dest", "tcp:10.1.0.10:80,443", "--json")
        cli(profile, "admin", "application", "create", "build-ssh", "--connector-group", "branch-office",
            "--dest", "tcp:10.1.0.20:22", "--json")
        cli(profile, "admin", "group", "create", "engineering", "--json")
        user = json.loads(cli(profile, "admin", "user", "create", "bob", "--group", "engineering", "--json"))
        cli(profile, "admin", "policy", "create", "engineering-web", "--group", "engineering", "--app", "intranet-web", "--json")
        cli(profile, "admin", "gateway", "create", "edge-1", "--endpoint", "127.0.0.1", "--json")
        lc.activate("bob", user["activation_code"], "bob-password-12345")
        console.print("  user 'bob' activated his account (password + TOTP)")
        console.print(cli(profile, "admin", "policy", "list"))

        step(5, "Issue a connector install string and enroll a connector with it")
        key_out = cli(profile, "admin", "key", "create", "--connector-group", "branch-office", "--json")
        install = json.loads(key_out)["install_string"]
        console.print(f"  install string (valid 60 minutes, one use):\n  [bold]zerogate connector enroll {install}[/]")
        enrolled = json.loads(cli(profile, "connector", "enroll", install, "--name", "branch-connector-1",
                                  "--state-dir", str(demo / "connector"), "--json"))
        console.print(f"  enrolled connector {enrolled['name']} as device {enrolled['device_id']}; "
                      f"its private keys stayed in {demo / 'connector'}")

        step(6, "Ask the policy engine, and verify the audit chain")
        for dest, port in (("10.1.0.10", "443"), ("10.1.0.20", "22")):
            out = cli(profile, "admin", "explain", "bob", dest, "--port", port).strip()
            console.print(f"  bob -> {dest}:{port}: {out}")
        console.print("  " + cli(profile, "admin", "audit", "verify").strip())
        second_key = json.loads(cli(profile, "admin", "key", "create", "--connector-group", "branch-office", "--json"))

        console.print(
            f"\n[bold green]Demo ready[/] in {time.monotonic() - started:.1f} s.\n"
            f"  API docs (OpenAPI): {lc.url}/docs   (the CA is {lc.data_dir / 'ca.pem'})\n"
            f"  try:  ZEROGATE_PROFILE={profile} zerogate admin audit list\n"
            f"  a fresh connector install string:\n  zerogate connector enroll {second_key['install_string']}"
        )
        if sys.stdin.isatty() and not args.no_wait:
            try:
                input("\nThe controller keeps running; press Enter (or Ctrl-C) to stop it. ")
            except (KeyboardInterrupt, EOFError):
                pass
    console.print("Controller stopped. The demo's files stay in demo-data/ until the next run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
