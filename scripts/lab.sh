#!/usr/bin/env bash
# The lessons command (`make lab`): set the machine up, install the root kernel, then start
# JupyterLab on notebooks/, on 127.0.0.1 only, behind a token.
#
#   scripts/lab.sh [--port N] [--token T] [--no-setup] [--browser]
#
# PORT and TOKEN in the environment do the same as the flags (default 8888 and a fresh
# random token). The server runs in the foreground: Ctrl-C stops it and its kernels.
set -euo pipefail

cd "$(dirname "$0")/.."
PORT=${PORT:-8888}
TOKEN=${TOKEN:-}
setup=1
browser=0
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=${2:?--port needs a number}; shift 2 ;;
    --port=*) PORT=${1#*=}; shift ;;
    --token) TOKEN=${2:?--token needs a value}; shift 2 ;;
    --token=*) TOKEN=${1#*=}; shift ;;
    --no-setup) setup=0; shift ;;
    --browser) browser=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "lab: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$PORT" in
  ''|*[!0-9]*) echo "lab: the port must be a number, not '$PORT'" >&2; exit 2 ;;
esac

if [ "$setup" = 1 ]; then bash scripts/setup.sh; fi
VENV=.venv
if [ ! -x "$VENV/bin/jupyter-lab" ]; then
  echo "lab: $VENV/bin/jupyter-lab is missing: run scripts/setup.sh (or make setup) first" >&2
  exit 1
fi

# The kernel the notebooks name (ebpfkit), with root's rights: root runs it directly,
# another user through sudo -n (the install says what sudo needs if that fails).
"$VENV/bin/ebpfkit" kernel install --sys-prefix --quiet
if [ "$(id -u)" -ne 0 ] && ! "$VENV/bin/ebpfkit" kernel check; then
  echo "lab: the lessons' kernel cannot get root through sudo yet: add the rule above" >&2
fi

# A token in the URL is the only key to a server that runs code as root.
if [ -z "$TOKEN" ]; then
  TOKEN=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(24))')
fi

# The server's own settings (overrides.json, read by every browser that opens this lab): no
# "Would you like to get notified about official Jupyter news?" pop-up over a lesson, no news
# fetched, no update check. Merged into what the file already holds.
"$VENV/bin/python" - "$VENV/share/jupyter/lab/settings/overrides.json" <<'EOF'
import json, pathlib, sys
path = pathlib.Path(sys.argv[1])
settings = json.loads(path.read_text()) if path.exists() else {}
settings.setdefault("@jupyterlab/apputils-extension:notification", {}).update(
    {"fetchNews": "false", "checkForUpdates": False}
)
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(settings, indent=2) + "\n")
EOF

url="http://127.0.0.1:$PORT/lab?token=$TOKEN"
printf '\n  The lessons: open this address in a browser on this machine\n'
printf '  (from another machine: ssh -L %s:127.0.0.1:%s this-host, then the same address)\n\n' \
  "$PORT" "$PORT"
printf '      %s\n\n' "$url"

args=(
  --ServerApp.root_dir=notebooks
  --ServerApp.ip=127.0.0.1
  --ServerApp.port="$PORT"
  --ServerApp.port_retries=0
  --IdentityProvider.token="$TOKEN"
  --MappingKernelManager.default_kernel_name=ebpfkit
  # No calls home: a workshop room may have no internet.
  --LabApp.news_url=None
  --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate
)
if [ "$browser" = 1 ]; then args+=(--ServerApp.open_browser=True); else args+=(--no-browser); fi
if [ "$(id -u)" -eq 0 ]; then args+=(--allow-root); fi
exec "$VENV/bin/jupyter-lab" "${args[@]}"
