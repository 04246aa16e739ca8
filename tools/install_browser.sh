#!/usr/bin/env bash
# Installs what the browser test (tests/browser, pytest marker `browser`) needs and nothing else:
#   * Debian's `chromium` (apt-get), when no Chromium is found;
#   * with --python PY: the Python `playwright` package into that interpreter, when missing.
# Never runs `playwright install` (that downloads browsers from the internet).
#
# Every step is bounded in time (--timeout, default 600 s in all, `timeout` per command, and apt
# waits at most 120 s for a lock held by another apt). On failure it says what is missing and how
# to install it by hand, and exits 1. On success it prints the Chromium executable on the last line.
#
#   tools/install_browser.sh                      # chromium only
#   tools/install_browser.sh --python .venv/bin/python
#   MITOOLKIT_CHROMIUM=/opt/chrome/chrome tools/install_browser.sh   # use this browser instead
set -uo pipefail

BUDGET=600
PYTHON=""
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) BUDGET="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        -h|--help) sed -n 2,13p "$0"; exit 0 ;;
        *) echo "install_browser.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
START=$SECONDS

say() { echo "install_browser.sh: $*" >&2; }
left() {  # seconds left of the budget, at least 1 (`timeout 0` would mean no bound at all)
    local n=$(( BUDGET - (SECONDS - START) ))
    [ "$n" -ge 1 ] && echo "$n" || echo 1
}
fail() {
    say "FAILED: $1"
    say "to install by hand: $2"
    exit 1
}

find_chromium() {
    if [ -n "${MITOOLKIT_CHROMIUM:-}" ]; then
        [ -x "$MITOOLKIT_CHROMIUM" ] && { echo "$MITOOLKIT_CHROMIUM"; return 0; }
        return 1
    fi
    local c
    for c in chromium chromium-browser; do
        command -v "$c" >/dev/null 2>&1 && { command -v "$c"; return 0; }
    done
    [ -x /usr/bin/chromium ] && { echo /usr/bin/chromium; return 0; }
    return 1
}

HOW_CHROMIUM="sudo apt-get update && sudo apt-get install -y chromium   (Debian/Ubuntu; or point MITOOLKIT_CHROMIUM at a Chromium/Chrome executable)"

# -- Python playwright ----------------------------------------------------------------------------
if [ -n "$PYTHON" ]; then
    if ! "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
        say "the Python package playwright is missing in $PYTHON; installing it with pip"
        timeout "$(left)" "$PYTHON" -m pip install --quiet "playwright>=1.40" >&2 \
            || fail "could not pip install playwright into $PYTHON" "$PYTHON -m pip install 'playwright>=1.40'  (never 'playwright install': the test uses Debian's chromium)"
    fi
fi

# -- Chromium ---------------------------------------------------------------------------------------
if path=$(find_chromium); then
    echo "$path"
    exit 0
fi
if [ -n "${MITOOLKIT_CHROMIUM:-}" ]; then
    fail "MITOOLKIT_CHROMIUM=$MITOOLKIT_CHROMIUM is not an executable file" "unset MITOOLKIT_CHROMIUM to use Debian's chromium, or fix the path"
fi
command -v apt-get >/dev/null 2>&1 \
    || fail "Chromium is not installed and this system has no apt-get" "install Chromium or Chrome with your package manager and set MITOOLKIT_CHROMIUM=/path/to/it"
SUDO=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        fail "Chromium is not installed, and installing it needs root (not root, no password-less sudo)" "$HOW_CHROMIUM"
    fi
fi

APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 -o Acquire::Retries=2 -o Acquire::http::Timeout=30)
say "Chromium not found; installing Debian's chromium with apt-get (at most ${BUDGET} s)"
timeout "$(left)" "${SUDO[@]}" "${APT[@]}" update -qq >&2
rc=$?
[ $rc = 124 ] && fail "apt-get update ran past the ${BUDGET} s budget" "$HOW_CHROMIUM"
[ $rc != 0 ] && say "apt-get update exited $rc; trying the install with the lists there are"
[ $(( BUDGET - (SECONDS - START) )) -gt 5 ] || fail "no time left for apt-get install" "$HOW_CHROMIUM"
# fonts-liberation: readable text in the screenshot on machines without fonts (small).
timeout "$(left)" "${SUDO[@]}" "${APT[@]}" install -y -qq --no-install-recommends chromium fonts-liberation >&2
rc=$?
[ $rc = 124 ] && fail "apt-get install chromium ran past the ${BUDGET} s budget" "$HOW_CHROMIUM"
[ $rc != 0 ] && fail "apt-get install chromium exited $rc (see its messages above)" "$HOW_CHROMIUM"

path=$(find_chromium) || fail "apt-get succeeded but no chromium executable was found" "$HOW_CHROMIUM"
version=$(timeout 30 "$path" --headless --no-sandbox --version 2>/dev/null || true)
say "installed ${version:-chromium} at $path in $(( SECONDS - START )) s"
echo "$path"
