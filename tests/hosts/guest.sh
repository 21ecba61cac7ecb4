#!/bin/bash
# Runs INSIDE a test host (as root, in a copy of the checkout, no network): the README's two
# commands, then the suite folder by folder.  tests/hosts/run.sh boots the host and runs this;
# it also works by hand on any throwaway machine that has the packages of the README.
#
#   HOSTS_OUT      where results go (default /tmp/lxcbind-hosts)
#   HOSTS_WHEELS   a directory of wheels pip installs from (no index: the host has no network);
#                  unset: pip uses its index as configured
#   HOSTS_TESTS    pytest folders, each its own pytest process (default: every folder)
#   HOSTS_BUDGET   seconds for all folders together (default 7800); a folder that would start
#                  with less than a minute left is skipped and reported as such
#   HOSTS_LINT=0   skip ruff and mypy (host-independent; mypy needs the ray extra, which an
#                  offline host does not get)
#   HOSTS_BENCH    a command run in the checkout after the suite, the venv's bin first on PATH
#                  (e.g. "python3 benchmarks/bench_floor.py --cpu -n 20"): its output in
#                  bench.txt, its exit status in commands.txt.  With HOSTS_BENCH and no
#                  HOSTS_TESTS, no test folder runs: the benchmark alone, on an idle host
# Results: $HOSTS_OUT/facts.txt, commands.txt (each command's exit status), junit-*.xml,
# pytest-*.log, summary.txt (one line per folder: passed/failed/errors/skipped, then each
# failure's first error line), apparmor.txt (denials during the run).  Exit status 0.
set -u
cd "$(dirname "$0")/../.."
OUT="${HOSTS_OUT:-/tmp/lxcbind-hosts}"
TESTS="${HOSTS_TESTS:-tests/unit tests/security tests/integration/lxc tests/integration/sandbox tests/integration/image tests/integration/proc tests/integration/api tests/integration/net}"
# A benchmark alone unless folders are named: the suite would load the host it measures.
[ -n "${HOSTS_BENCH:-}" ] && TESTS="${HOSTS_TESTS:-}"
BUDGET="${HOSTS_BUDGET:-7800}"
mkdir -p "$OUT"
# A copy of a git worktree carries a .git file that points outside the host: the project's
# tests that list tracked files (git ls-files) need a repository.  The copy holds the tracked
# and untracked-not-ignored files, so a fresh one that adds them all lists the same.
if ! git rev-parse --git-dir > /dev/null 2>&1; then
    rm -rf .git && git init -q && git add -A
fi
if [ -n "${HOSTS_WHEELS:-}" ]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$HOSTS_WHEELS"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

{
    echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "kernel: $(uname -r)"
    echo "lxc: $(lxc-info --version 2>&1)"
    echo "cgroup: $(stat -fc %T /sys/fs/cgroup) ($(grep -c cgroup /proc/self/mounts) cgroup mounts)"
    echo "lsm: $(cat /sys/kernel/security/lsm 2>/dev/null)"
    echo "apparmor: $(cat /sys/module/apparmor/parameters/enabled 2>/dev/null || echo absent)"
    echo "systemd: $(systemctl --version 2>/dev/null | head -1)"
    echo "python3: $(python3 --version 2>&1) ($(command -v python3))"
    echo "memory: $(grep MemTotal /proc/meminfo | tr -s ' ')"
    echo "perf: $(perf --version 2>/dev/null || echo absent)"
    echo "checkout: ${HOSTS_COMMIT:-$(git log -1 --format='%h %s' 2>/dev/null | cut -c1-80)}"
} | tee "$OUT/facts.txt"
dmesg > "$OUT/.dmesg-before"
: > "$OUT/commands.txt"

# The README's first command, as written there, without its apt-get part (the packages are
# on the host already, and there is no network to fetch them).
step1="$(sed -n '/^# 1\. /{n;p;q}' README.md | sed -E 's/^apt-get update && apt-get install -y [^&]*&& //')"
echo; echo "== README command 1: $step1"
rm -rf .venv
bash -c "$step1"
echo "readme-1 $?" | tee -a "$OUT/commands.txt"

# The README's second command is .ci/run: its steps here, without apt-get (as above) and the
# ray extra (tests/integration/api/test_ray.py skips without it).
echo; echo "== README command 2 (.ci/run without apt-get and ray), then the suite per folder"
PY=.venv/bin/python
"$PY" -m pip install -q -e '.[test,lint]'; echo "ci-install $?" | tee -a "$OUT/commands.txt"
if [ "${HOSTS_LINT:-1}" = 1 ]; then   # minutes under emulation; the same on every host
    "$PY" -m ruff check lxcbind tests benchmarks examples; echo "ci-ruff $?" | tee -a "$OUT/commands.txt"
    "$PY" -m mypy; echo "ci-mypy $?" | tee -a "$OUT/commands.txt"   # needs the ray extra
fi

: > "$OUT/selections.txt"
start=$(date +%s)
for folder in $TESTS; do
    name="$(echo "$folder" | tr '/:' '__')"
    printf '%s\t%s\n' "$name" "$folder" >> "$OUT/selections.txt"
    left=$(( BUDGET - ($(date +%s) - start) ))
    if [ "$left" -lt 60 ]; then echo "$folder skipped (budget spent)" >> "$OUT/skipped.txt"; continue; fi
    t0=$(date +%s)
    timeout --kill-after=30 "$left" "$PY" -m pytest -q -p no:cacheprovider \
        --junitxml="$OUT/junit-$name.xml" "$folder" > "$OUT/pytest-$name.log" 2>&1
    echo "pytest-$name $? $(( $(date +%s) - t0 ))s" | tee -a "$OUT/commands.txt"
    # After each folder: the kernel's ring buffer wraps within a whole suite (every container
    # start logs), and a denial read only at the end would be lost.
    dmesg | grep 'apparmor="DENIED"' >> "$OUT/.denials"
    tail -1 "$OUT/pytest-$name.log"
done

if [ -n "${HOSTS_BENCH:-}" ]; then
    left=$(( BUDGET - ($(date +%s) - start) )); t0=$(date +%s)
    echo; echo "== benchmark: $HOSTS_BENCH (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    PATH="$PWD/.venv/bin:$PATH" timeout --kill-after=30 "$(( left > 60 ? left : 60 ))" \
        bash -c "$HOSTS_BENCH" > "$OUT/bench.txt" 2>&1
    echo "bench $? $(( $(date +%s) - t0 ))s" | tee -a "$OUT/commands.txt"
    cat "$OUT/bench.txt"
fi

python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import glob, os, sys, xml.etree.ElementTree as ET
out = sys.argv[1]
names = dict(line.rstrip("\n").split("\t") for line in open(os.path.join(out, "selections.txt")))
for path in sorted(glob.glob(os.path.join(out, "junit-*.xml"))):
    root = ET.parse(path).getroot()
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    failed = []
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            for bad in case.findall("failure") + case.findall("error"):
                first = ((bad.get("message") or bad.text or "").strip().splitlines() or [""])[0]
                failed.append(f"  {bad.tag}: {case.get('classname')}::{case.get('name')}: "
                              f"{first[:300]}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    folder = names.get(os.path.basename(path)[6:-4], path)
    print(f"{folder}: {passed} passed, {counts['failures']} failed, {counts['errors']} errors, "
          f"{counts['skipped']} skipped of {counts['tests']}")
    print("\n".join(failed)) if failed else None
PY
cat "$OUT/skipped.txt" 2>/dev/null
dmesg | grep 'apparmor="DENIED"' >> "$OUT/.denials"
sort -u "$OUT/.denials" | grep -F -x -v -f "$OUT/.dmesg-before" > "$OUT/apparmor.txt"
echo "AppArmor denials during the run: $(wc -l < "$OUT/apparmor.txt")"
echo "containers left: $(lxc-ls -1 2>/dev/null | tr '\n' ' ')"
exit 0
