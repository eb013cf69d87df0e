#!/usr/bin/env bash
# Run the whole suite under every supported Python found on this machine, each in a venv of its
# own, and print a table of what ran and what passed.
#
# Interpreters: for each supported minor version, pyenv's newest patch release
# ($PYENV_ROOT/versions/3.X.Y), else python3.X on PATH. Each runs with the newest libraries it
# supports (pandas 3 where there is one for it, else pandas 2; numpy 2); 3.10 and 3.12 also run
# with the oldest supported ones (pandas 2.2, numpy 1.26, pyarrow 15).
#
# The venvs hold the test dependencies only (nbcache itself runs from this tree through
# PYTHONPATH) and live outside the repository, in $NBCACHE_MATRIX_HOME (default
# ~/.cache/nbcache-test-matrix): one per interpreter, library set and dependency list of
# pyproject.toml, reused while those stay the same (one unused for three days is removed when
# another of its interpreter and library set is used). pip installs them from its local cache
# when it can.
#
# The cross-version tests (tests/test_cross_version.py) run here: each row is given the other
# rows' interpreters in NBCACHE_TEST_PYTHONS, and this script fails when it finds fewer than two
# Python minor versions.
#
# Usage: scripts/test-matrix.sh [--newest-only] [pytest arguments...]
#   --newest-only   skip the rows with the oldest supported libraries
# Exit status: 0 only if every row ran its tests and all of them passed (pytest's exit status 5,
# "no tests ran", is a failure), and at least two Python minor versions were found.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

SUPPORTED="3.10 3.11 3.12 3.13 3.14"
# row: minor version and library set
ROWS="3.10:newest 3.10:oldest 3.11:newest 3.12:newest 3.12:oldest 3.13:newest 3.14:newest"
OLDEST_CONSTRAINTS=("pandas==2.2.*" "numpy==1.26.*" "pyarrow==15.*")
ROW_TIMEOUT=${NBCACHE_MATRIX_ROW_TIMEOUT:-900} # seconds: a hung row fails instead of hanging CI
# Unix time by which every row must have ended (CI's limit): a row that would run past it is cut
# short, and rows not started by then fail as "not run", so the table is printed in time.
DEADLINE=${NBCACHE_MATRIX_DEADLINE:-}
HOME_DIR=${NBCACHE_MATRIX_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/nbcache-test-matrix}

newest_only=0
if [ "${1:-}" = "--newest-only" ]; then
    newest_only=1
    shift
fi

# The interpreter of one minor version: pyenv's newest patch release, else python3.X on PATH.
find_python() {
    local minor=$1 root=${PYENV_ROOT:-$HOME/.pyenv} dir candidate
    while read -r dir; do
        if [ -x "$dir/bin/python$minor" ]; then
            echo "$dir/bin/python$minor"
            return 0
        fi
    done < <(find "$root/versions" -maxdepth 1 -regex ".*/$minor\.[0-9]+" 2>/dev/null | sort -V -r)
    # on PATH; a pyenv shim for a version pyenv does not have fails to run, so ask it
    if candidate=$(command -v "python$minor") &&
        candidate=$("$candidate" -c 'import sys; print(sys.executable)' 2>/dev/null); then
        echo "$candidate"
        return 0
    fi
    return 1
}

# pyproject.toml's runtime and test dependencies, one a line (tomllib: Python 3.11+)
requirements() {
    "$1" - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
EOF
}

declare -A python_of venv_of label_of result_of seconds_of
found_minors=()
missing=()
for minor in $SUPPORTED; do
    if python=$(find_python "$minor"); then
        python_of[$minor]=$python
        found_minors+=("$minor")
    else
        missing+=("$minor")
    fi
done
echo "Interpreters found: ${found_minors[*]:-none}; not found: ${missing[*]:-none}"

reader=""
for minor in "${found_minors[@]}"; do
    if "${python_of[$minor]}" -c 'import tomllib' 2>/dev/null; then
        reader=${python_of[$minor]}
        break
    fi
done
if [ -z "$reader" ]; then
    echo "test-matrix: reading pyproject.toml needs a Python 3.11 or newer; none was found" >&2
    exit 1
fi
REQUIREMENTS=$(requirements "$reader") || exit 1

# Create (or reuse) the venv of one row; print its directory.
prepare_venv() {
    local python=$1 libraries=$2 version digest venv constraints=()
    version=$("$python" -c 'import platform; print(platform.python_version())')
    if [ "$libraries" = oldest ]; then constraints=("${OLDEST_CONSTRAINTS[@]}"); fi
    digest=$(printf '%s\n' "$version" "$REQUIREMENTS" "${constraints[@]}" | sha256sum | cut -c1-12)
    venv="$HOME_DIR/$version-$libraries-$digest"
    mkdir -p "$HOME_DIR"
    (
        flock 9 # another checkout running the matrix may be building the same venv
        if [ ! -e "$venv/complete" ]; then
            rm -rf "$venv"
            echo "Creating $venv ..." >&2
            "$python" -m venv "$venv" >&2 || exit 1
            printf '%s\n' "$REQUIREMENTS" >"$venv/requirements.txt"
            printf '%s\n' "${constraints[@]}" >"$venv/constraints.txt"
            if ! "$venv/bin/python" -m pip install --disable-pip-version-check \
                -r "$venv/requirements.txt" -c "$venv/constraints.txt" >"$venv/install.log" 2>&1; then
                tail -n 30 "$venv/install.log" >&2
                exit 1
            fi
        fi
        touch "$venv/complete" # when it was last used
    ) 9>"$venv.lock" || return 1
    # venvs of this interpreter and library set for other dependency lists, unused for 3 days
    find "$HOME_DIR" -maxdepth 2 -path "$HOME_DIR/$version-$libraries-*/complete" -mtime +3 |
        while read -r stale; do
            rm -rf "$(dirname "$stale")" "$(dirname "$stale").lock"
        done
    echo "$venv"
}

rows=()
for row in $ROWS; do
    minor=${row%%:*}
    libraries=${row#*:}
    [ -n "${python_of[$minor]:-}" ] || continue
    [ "$libraries" = oldest ] && [ "$newest_only" = 1 ] && continue
    rows+=("$row")
    if venv=$(prepare_venv "${python_of[$minor]}" "$libraries"); then
        venv_of[$row]=$venv
        label_of[$row]=$("$venv/bin/python" -c '
import platform, numpy, pandas
print(f"Python {platform.python_version()}, pandas {pandas.__version__}, numpy {numpy.__version__}")')
    else
        label_of[$row]="${python_of[$minor]} ($libraries libraries)"
        result_of[$row]="FAILED: could not install the test dependencies"
    fi
done

# every row's interpreter, for the cross-version tests
others=""
for row in "${rows[@]}"; do
    [ -n "${venv_of[$row]:-}" ] && others="$others${others:+:}${venv_of[$row]}/bin/python"
done

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/nbcache-matrix.XXXXXX")
failed=0
for row in "${rows[@]}"; do
    venv=${venv_of[$row]:-}
    if [ -z "$venv" ]; then
        failed=1
        continue
    fi
    limit=$ROW_TIMEOUT
    if [ -n "$DEADLINE" ]; then
        left=$((DEADLINE - $(date +%s)))
        if [ "$left" -lt 60 ]; then
            result_of[$row]="FAILED: not run, out of time (NBCACHE_MATRIX_DEADLINE)"
            failed=1
            continue
        fi
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    log="$LOGS/${row/:/-}.log"
    echo "=== ${label_of[$row]}: running the suite (log: $log)"
    started=$SECONDS
    # The venv's bin first on PATH: kernels the tests start run this interpreter too.
    PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" \
        NBCACHE_TEST_PYTHONS="$others" \
        timeout --kill-after=30 "$limit" "$venv/bin/python" -m pytest "$@" >"$log" 2>&1
    status=$?
    seconds_of[$row]=$((SECONDS - started))
    summary=$(grep -E '^=* ?([0-9]+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed)|no tests ran)' "$log" |
        tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    case $status in
        0) result_of[$row]="passed: $summary" ;;
        5) result_of[$row]="FAILED: no tests ran" ;;
        124 | 137) result_of[$row]="FAILED: timed out after ${limit}s" ;;
        *) result_of[$row]="FAILED (pytest exit $status): ${summary:-see the log}" ;;
    esac
    if [ "$status" != 0 ]; then
        failed=1
        tail -n 40 "$log"
    fi
done

echo
echo "Test matrix (logs in $LOGS)"
printf '%-48s %-8s %s\n' "Interpreter and libraries" "time" "result"
for row in "${rows[@]}"; do
    seconds=${seconds_of[$row]:-}
    took=${seconds:+$((seconds / 60))m$((seconds % 60))s}
    printf '%-48s %-8s %s\n' "${label_of[$row]}" "${took:--}" "${result_of[$row]}"
done
for minor in "${missing[@]}"; do
    printf '%-48s %-8s %s\n' "Python $minor" "-" "not found on this machine"
done
if [ "${#found_minors[@]}" -lt 2 ]; then
    echo "test-matrix: FAILED: the cross-version tests need two Python minor versions; found ${found_minors[*]:-none}"
    failed=1
fi
exit $failed
