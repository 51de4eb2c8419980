#!/usr/bin/env bash
# Install the HumanEval-X execution toolchains from Debian (apt) and npm.
#
# Usage: run_scripts/install_eval_toolchains.sh [LANG ...]
#   LANG: python cpp java js go rust (default: all). bubblewrap (the sandbox) is always installed.
#
# Idempotent: packages already installed and a js-md5 already in the cache are skipped. Runs as
# root (CI) or with sudo. Prints, per language, what was installed or skipped and the seconds it
# took. js-md5 goes to the evaluation cache that codegeex_ms.humaneval uses:
# $CODEGEEX_EVAL_CACHE, else $XDG_CACHE_HOME/codegeex_ms, else $HOME/.cache/codegeex_ms.
# Rust crates and the Go build cache are prepared there by the evaluator on first use.
set -euo pipefail

ALL_LANGS=(python cpp java js go rust)
LANGS=("$@")
[[ ${#LANGS[@]} -eq 0 || " ${LANGS[*]} " == *" all "* ]] && LANGS=("${ALL_LANGS[@]}")
for lang in "${LANGS[@]}"; do
  [[ " ${ALL_LANGS[*]} " == *" $lang "* ]] || { echo "unknown language '$lang'; use: ${ALL_LANGS[*]} or all" >&2; exit 2; }
done

CACHE_DIR="${CODEGEEX_EVAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/codegeex_ms}"
export DEBIAN_FRONTEND=noninteractive
if [[ $(id -u) -eq 0 ]]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo -E); else SUDO=(); fi

APT_UPDATED=0
SUMMARY=()

is_installed() {  # is_installed PKG: 0 if the Debian package (or a package providing it) is installed
  dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q "install ok installed" && return 0
  # a virtual package counts when an installed package provides it
  dpkg-query -W -f='${Status}|${Provides}\n' 2>/dev/null | grep "^install ok installed|" \
    | cut -d'|' -f2 | tr ',' '\n' | sed 's/ (.*//; s/^ *//' | grep -qFx "$1"
}

apt_install() {  # apt_install PKG...: install those not installed yet; echo what happened
  local missing=()
  for pkg in "$@"; do is_installed "$pkg" || missing+=("$pkg"); done
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "  apt: already installed: $*"
    return 0
  fi
  if [[ $APT_UPDATED -eq 0 ]]; then
    "${SUDO[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
  echo "  apt: installing ${missing[*]}"
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_python() {
  echo "  python: uses the evaluation interpreter (the project's venv, which has numpy); nothing to install"
}

install_cpp() {
  apt_install g++ libssl-dev libboost-dev
}

install_java() {
  if command -v javac >/dev/null && command -v java >/dev/null; then
    echo "  java: javac/java already present ($(javac -version 2>&1))"
  else
    apt_install default-jdk-headless
  fi
}

install_js() {
  if command -v node >/dev/null; then echo "  js: node already present ($(node --version))"; else apt_install nodejs; fi
  command -v npm >/dev/null || apt_install npm
  if [[ -d "$CACHE_DIR/js/node_modules/js-md5" ]]; then
    echo "  npm: js-md5 already in $CACHE_DIR/js"
  else
    mkdir -p "$CACHE_DIR/js"
    echo "  npm: installing js-md5 into $CACHE_DIR/js"
    npm install --silent --no-audit --no-fund --prefix "$CACHE_DIR/js" js-md5 >/dev/null
  fi
  chmod -R a+rX "$CACHE_DIR/js"
}

install_go() {
  local pkgs=(golang-github-stretchr-testify-dev)
  command -v go >/dev/null && echo "  go: already present ($(go version))" || pkgs+=(golang-go)
  apt_install "${pkgs[@]}"
}

install_rust() {
  local pkgs=(librust-rand-dev 'librust-regex+default-dev' librust-md5-dev)
  if command -v cargo >/dev/null && command -v rustc >/dev/null; then
    echo "  rust: cargo/rustc already present ($(rustc --version))"
  else
    pkgs+=(cargo)
  fi
  apt_install "${pkgs[@]}"
}

timed() {  # timed NAME FUNCTION: run it, record the seconds
  local start end
  echo "== $1"
  start=$(date +%s.%N)
  "$2"
  end=$(date +%s.%N)
  SUMMARY+=("$(awk -v n="$1" -v s="$start" -v e="$end" 'BEGIN { printf "%-10s %6.1f s", n, e - s }')")
}

install_sandbox() { apt_install bubblewrap util-linux; }
timed sandbox install_sandbox
for lang in "${LANGS[@]}"; do timed "$lang" "install_$lang"; done

echo "== summary (seconds per step)"
printf '%s\n' "${SUMMARY[@]}"
