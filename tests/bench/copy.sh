#!/usr/bin/env bash
# Copy benchmark (issue 2): osm-agent's copy engine against nbdcopy and qemu-img convert,
# same source (nbdkit file plugin over an image in page cache, on a Unix socket), same
# target (a loop device over a file, emptied before every run), same run.
#
# Prints one line per scenario on stdout:
#   scenario=NAME osm_s=T nbdcopy_s=T qemu_img_s=T ratio_vs_nbdcopy=R
# (median of BENCH_REPEAT runs; ratio = nbdcopy_s / osm_s, > 1 means osm is faster),
# and after delta1: delta1_bytes_read=X delta1_bytes_listed=Y.
# Everything else (progress, per-run times) goes to stderr. See tests/bench/README.md.
#
# Environment:
#   BENCH_SIZE=4G            disk size (IEC suffixes; at least 256M, a multiple of 1M)
#   BENCH_REPEAT=3           runs per tool and scenario; the median is reported
#   BENCH_SCENARIOS="dense sparse10 delta1"
#   BENCH_TARGET_IS_ZERO=1   tell all three tools the (freshly discarded) target reads as
#                            zeroes: osm --target-is-zero, nbdcopy --destination-is-zero,
#                            qemu-img -n --target-is-zero. 0: none of them is told.
#   BENCH_WARMUP=1           untimed nbdcopy runs per scenario before the measured ones, so
#                            no tool pays for first-run effects (the first measured run of a
#                            scenario is osm's)
#   BENCH_TMPDIR=/var/tmp    where the scratch folder goes (needs ~2x BENCH_SIZE free, not tmpfs)
#   BENCH_LOOP_DIO=1         loop device with --direct-io=on: it writes its backing file with
#                            O_DIRECT, like a real disk, instead of through a second page
#                            cache (ignored by the kernel where the backing fs can't, e.g. tmpfs)
#   BENCH_TARGET_DIR=DIR     put the loop device's backing file there instead of the scratch
#                            folder, e.g. /dev/shm to take the disk out of the measurement
#                            (needs BENCH_SIZE of RAM on top of the source's page cache)
#   BENCH_AGENT_TOML=FILE    appended to the agent's config (e.g. a [copy] section to try
#                            other tuning); default: the agent's built-in [copy] defaults
#   CARGO_TARGET_DIR         honoured for the build and for finding the binaries
#
# Needs root (loop devices, blkdiscard). Exit status: 0 when every copy was verified and
# delta1 read exactly the listed bytes, non-zero otherwise.
set -euo pipefail
export LC_ALL=C

size_arg=${BENCH_SIZE:-4G}
repeat=${BENCH_REPEAT:-3}
scenarios=${BENCH_SCENARIOS:-dense sparse10 delta1}
target_is_zero=${BENCH_TARGET_IS_ZERO:-1}
warmup=${BENCH_WARMUP:-1}
loop_dio=${BENCH_LOOP_DIO:-1}
root=$(cd "$(dirname "$0")/../.." && pwd)

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}

# ---------------------------------------------------------------- checks
[[ $(id -u) == 0 ]] || die "needs root (loop devices, blkdiscard)"
for cmd in cargo nbdkit nbdinfo nbdcopy qemu-img losetup blkdiscard openssl python3 jq cksum numfmt stat sync; do
    command -v "$cmd" >/dev/null || die "$cmd is not installed (nbdcopy: libnbd-bin, qemu-img: qemu-utils)"
done
cksum -a crc </dev/null >/dev/null 2>&1 || die "cksum -a crc needs coreutils >= 9"
[[ $repeat =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPEAT=$repeat: use a positive integer"
[[ $warmup =~ ^[0-9]+$ ]] || die "BENCH_WARMUP=$warmup: use 0 or a positive integer"
[[ $loop_dio == 0 || $loop_dio == 1 ]] || die "BENCH_LOOP_DIO=$loop_dio: use 0 or 1"
[[ $target_is_zero == 0 || $target_is_zero == 1 ]] || die "BENCH_TARGET_IS_ZERO=$target_is_zero: use 0 or 1"
size=$(numfmt --from=iec "$size_arg") || die "BENCH_SIZE=$size_arg: not a size"
((size >= 256 << 20 && size % (1 << 20) == 0)) || die "BENCH_SIZE=$size_arg: use at least 256M, a multiple of 1M"
for s in $scenarios; do
    case $s in dense | sparse10 | delta1) ;; *) die "unknown scenario $s (dense, sparse10, delta1)" ;; esac
done

# ---------------------------------------------------------------- build
log "building osm-agent and osmctl (release)"
(cd "$root" && cargo build --release -p osm-agent -p osmctl) >&2
bin=${CARGO_TARGET_DIR:-$root/target}/release
[[ $bin == /* ]] || bin=$root/$bin
agent_bin=$bin/osm-agent
osmctl_bin=$bin/osmctl
[[ -x $agent_bin && -x $osmctl_bin ]] || die "no binaries in $bin"

# ---------------------------------------------------------------- scratch + cleanup
work=""
target_file=""
agent_pid=""
nbdkit_pid=""
loopdev=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM HUP
    ((rc == 0)) || log "exit status $rc; cleaning up"
    for pid in "$agent_pid" "$nbdkit_pid"; do
        [[ -n $pid ]] || continue
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    [[ -n $loopdev ]] && losetup -d "$loopdev"
    [[ -n $target_file ]] && rm -f -- "$target_file"
    [[ -n $work && -d $work ]] && rm -rf -- "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

work=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/osm-bench.XXXXXX")
[[ $(stat -f -c %T "$work") != tmpfs ]] || die "$work is on tmpfs; set BENCH_TMPDIR to a disk-backed folder"
mkdir -p "$work/run" "$work/state" "$work/log"

# Python helpers: extent layouts, sparse images, checksums over extent lists.
cat >"$work/helper.py" <<'PY'
import hashlib, os, random, sys

ALIGN = 4096

def layout(size, count, fraction, seed):
    """`count` extents, one at a random 4 KiB-aligned place in each of `count` equal
    slots, lengths random around size*fraction/count, 4 KiB multiples."""
    rnd = random.Random(seed)
    slot = size // count // ALIGN * ALIGN
    mean = size * fraction / count
    lo, hi = max(1, int(mean * 0.5) // ALIGN), max(1, int(mean * 1.5) // ALIGN)
    out = []
    for i in range(count):
        length = min(rnd.randint(lo, hi) * ALIGN, slot)
        off = i * slot + rnd.randint(0, (slot - length) // ALIGN) * ALIGN
        out.append((off, length))
    return out

def sparse(src, dst, extents_out, size, count, fraction, seed):
    """dst: a `size`-byte sparse file holding src's bytes only in the layout's extents."""
    exts = layout(size, count, fraction, seed)
    with open(src, "rb") as s, open(dst, "wb") as d:
        d.truncate(size)
        for off, length in exts:
            done = 0
            while done < length:
                n = os.copy_file_range(s.fileno(), d.fileno(), length - done, off + done, off + done)
                if n <= 0:
                    sys.exit(f"copy_file_range at {off + done}: {n}")
                done += n
        os.fsync(d.fileno())
    with open(extents_out, "w") as f:
        for off, length in exts:
            f.write(f"{off} {length}\n")

def extsum(path, extents):
    """sha256 over the bytes of `path` in the listed extents, in list order."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        for line in open(extents):
            off, length = map(int, line.split())
            end = off + length
            while off < end:
                b = os.pread(fd, min(1 << 20, end - off), off)
                if not b:
                    sys.exit(f"{path}: short read at {off}")
                h.update(b)
                off += len(b)
    finally:
        os.close(fd)
    print(h.hexdigest())

def waitjob(sock):
    """Connect, read a job id from stdin, poll get_job until the job ends; print its
    final JobInfo on one line."""
    import json, socket, time
    c = socket.socket(socket.AF_UNIX)
    c.connect(sock)
    f = c.makefile("rw")
    print("ready", flush=True)
    job = sys.stdin.readline().strip()
    if not job:
        return
    while True:
        f.write(json.dumps({"op": "get_job", "id": int(job)}) + "\n")
        f.flush()
        reply = json.loads(f.readline())
        if not reply.get("ok"):
            sys.exit(f"get_job {job}: {reply.get('error')}")
        info = reply["result"]
        if info["state"] not in ("queued", "running"):
            print(json.dumps(info), flush=True)
            return
        time.sleep(0.01)

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "sparse":
    sparse(args[0], args[1], args[2], int(args[3]), int(args[4]), float(args[5]), int(args[6]))
elif cmd == "extsum":
    extsum(args[0], args[1])
elif cmd == "waitjob":
    waitjob(args[0])
else:
    sys.exit(f"unknown helper command {cmd}")
PY
helper() { python3 "$work/helper.py" "$@"; }

# ---------------------------------------------------------------- data (not timed)
need_dense=0 need_sparse=0 need_delta=0
for s in $scenarios; do
    case $s in dense) need_dense=1 ;; sparse10) need_sparse=1 ;; delta1) need_delta=1 ;; esac
done
log "generating $size_arg of non-zero data in $work"
# AES-CTR over zeroes: fast, incompressible, deterministic, and never a zero 4 KiB block
# in practice. CTR output is exactly as long as its input, so no SIGPIPE games.
head -c "$size" /dev/zero |
    openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f -iv 00000000000000000000000000000000 \
        >"$work/dense.img"
if ((need_sparse)); then
    log "sparse10 image: 1024 extents, ~10 % of the disk"
    helper sparse "$work/dense.img" "$work/sparse10.img" "$work/sparse10.extents" "$size" 1024 0.10 10
fi
if ((need_delta)); then
    log "delta1 image: 256 extents, ~1 % of the disk, the rest holes"
    helper sparse "$work/dense.img" "$work/delta1.img" "$work/delta1.extents" "$size" 256 0.01 1
fi
((need_dense)) || rm -f "$work/dense.img"
sync

if [[ -n ${BENCH_TARGET_DIR:-} ]]; then
    target_file=$(mktemp "$BENCH_TARGET_DIR/osm-bench-target.XXXXXX")
else
    target_file=$work/target.img
fi
truncate -s "$size" -- "$target_file"
loop_args=(--find --show)
if ((loop_dio)); then loop_args+=(--direct-io=on); fi
loopdev=$(losetup "${loop_args[@]}" -- "$target_file")
log "target: $loopdev over $target_file ($(stat -f -c %T -- "$target_file"), loop direct I/O: $(cat "/sys/block/${loopdev#/dev/}/loop/dio"))"

# ---------------------------------------------------------------- agent
cat >"$work/agent.toml" <<EOF
[agent]
socket = "$work/run/osm.sock"
state_dir = "$work/state"
runtime_dir = "$work/run"
log_dir = "$work/log"
dbus = "none"
EOF
if [[ -n ${BENCH_AGENT_TOML:-} ]]; then
    cat -- "$BENCH_AGENT_TOML" >>"$work/agent.toml"
fi
sock=$work/run/osm.sock
"$agent_bin" --config "$work/agent.toml" --dropin-dir "$work/no-dropins" >"$work/log/agent.out" 2>&1 &
agent_pid=$!
for _ in $(seq 200); do
    "$osmctl_bin" --socket "$sock" status >/dev/null 2>&1 && break
    kill -0 "$agent_pid" 2>/dev/null || { cat "$work/log/agent.out" >&2; die "osm-agent exited at start"; }
    sleep 0.1
done
"$osmctl_bin" --socket "$sock" status >/dev/null || die "osm-agent does not answer on $sock"

# ---------------------------------------------------------------- helpers
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

start_nbdkit() { # IMAGE
    nbd_sock=$work/run/nbdkit.sock
    uri="nbd+unix:///?socket=$nbd_sock"
    rm -f "$nbd_sock"
    nbdkit --foreground --exit-with-parent --readonly --unix "$nbd_sock" file "$1" \
        >"$work/log/nbdkit.out" 2>&1 &
    nbdkit_pid=$!
    local got=""
    for _ in $(seq 100); do
        got=$(nbdinfo --size "$uri" 2>/dev/null) && break
        sleep 0.1
    done
    [[ $got == "$size" ]] || die "nbdkit serving $1 answers size '$got', expected $size"
}

stop_nbdkit() {
    kill -TERM "$nbdkit_pid"
    wait "$nbdkit_pid" 2>/dev/null || true
    nbdkit_pid=""
}

# Before every run: source back in page cache, target emptied, nothing dirty in flight.
prepare() { # IMAGE
    cat -- "$1" >/dev/null
    blkdiscard -- "$loopdev"
    sync
    local blocks
    blocks=$(stat -c %b -- "$target_file")
    ((blocks == 0)) || die "target backing file still holds $blocks blocks after blkdiscard"
}

run_osm() { # SCENARIO -> sets run_s, osm_read, osm_written
    local args=(--socket "$sock" --output json copy --from "$uri" --to "$loopdev")
    if ((target_is_zero)); then args+=(--target-is-zero); fi
    if [[ $1 == delta1 ]]; then args+=(--extents "$work/delta1.extents"); fi
    local t0 t1 out id state wpid win wout
    # Follow the job over one socket connection, polling every 10 ms: osmctl --wait polls
    # every 500 ms when not on a tty, which would add up to half a second to every run.
    # The follower is started and connected before the clock starts, then told the id.
    coproc WAITER { helper waitjob "$sock"; }
    wpid=$WAITER_PID
    exec {wout}<&"${WAITER[0]}" {win}>&"${WAITER[1]}" # bash drops WAITER when it exits
    IFS= read -r out <&"$wout" && [[ $out == ready ]] || die "the job follower did not start"
    t0=$(now)
    out=$("$osmctl_bin" "${args[@]}")
    [[ $out =~ \"id\":\ *([0-9]+) ]] || die "osmctl copy: unexpected output: $out"
    id=${BASH_REMATCH[1]}
    printf '%s\n' "$id" >&"$win"
    IFS= read -r out <&"$wout" || die "lost the job follower"
    t1=$(now)
    exec {wout}<&- {win}>&-
    wait "$wpid" || die "the job follower failed"
    state=$(jq -r .state <<<"$out")
    [[ $state == succeeded ]] || die "osm job $id $state: $(jq -r .error <<<"$out")"
    local done total
    done=$(jq -r .bytes_done <<<"$out")
    total=$(jq -r .bytes_total <<<"$out")
    [[ $done == "$total" ]] || die "osm job $id: bytes_done $done != bytes_total $total"
    osm_read=$(jq -r .bytes_read <<<"$out")
    osm_written=$(jq -r .bytes_written <<<"$out")
    run_s=$(elapsed "$t0" "$t1")
}

run_nbdcopy() {
    local args=(--flush)
    if ((target_is_zero)); then args+=(--destination-is-zero); fi
    local t0 t1
    t0=$(now)
    nbdcopy "${args[@]}" -- "$uri" "$loopdev"
    t1=$(now)
    run_s=$(elapsed "$t0" "$t1")
}

run_qemu_img() {
    local args=(convert -n -f raw -O raw -t none)
    if ((target_is_zero)); then args+=(--target-is-zero); fi
    local t0 t1
    t0=$(now)
    qemu-img "${args[@]}" "$uri" "$loopdev"
    sync -- "$loopdev" # -t none writes O_DIRECT; this makes the device flush explicit
    t1=$(now)
    run_s=$(elapsed "$t0" "$t1")
}

# Checksum of what must be on the target: whole disk (CRC-32 + length, cksum -a crc,
# ~3 GB/s) or, for delta1, sha256 over the listed extents.
checksum() { # SCENARIO PATH
    if [[ $1 == delta1 ]]; then
        helper extsum "$2" "$work/delta1.extents"
    else
        cksum -a crc <"$2"
    fi
}

# ---------------------------------------------------------------- scenarios
delta_bad=0
delta_read="" delta_listed=""
tools=(osm nbdcopy qemu_img)
for scenario in $scenarios; do
    case $scenario in
        dense) image=$work/dense.img ;;
        sparse10) image=$work/sparse10.img ;;
        delta1) image=$work/delta1.img ;;
    esac
    alloc=$(($(stat -c %b -- "$image") * 512))
    log "scenario $scenario: $image, $alloc bytes allocated of $size"
    start_nbdkit "$image"
    want=$(checksum "$scenario" "$image")
    if [[ $scenario == delta1 ]]; then
        delta_listed=$(awk '{ s += $2 } END { print s }' "$work/delta1.extents")
    fi
    for ((r = 0; r < warmup; r++)); do
        prepare "$image"
        run_nbdcopy
        log "$scenario warm-up: nbdcopy ${run_s} s (not counted)"
    done
    log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    declare -A times=([osm]="" [nbdcopy]="" [qemu_img]="")
    for ((r = 0; r < repeat; r++)); do
        # Rotate the order each round so no tool always runs first (or last).
        for ((k = 0; k < ${#tools[@]}; k++)); do
            tool=${tools[(k + r) % ${#tools[@]}]}
            prepare "$image"
            extra=""
            case $tool in
                osm)
                    run_osm "$scenario"
                    extra=" (read $osm_read, written $osm_written)"
                    if [[ $scenario == delta1 ]]; then
                        if [[ $osm_read != "$delta_listed" ]]; then
                            log "delta1: osm read $osm_read bytes, the list holds $delta_listed"
                            [[ $delta_bad == 1 ]] || delta_read=$osm_read
                            delta_bad=1
                        elif [[ $delta_bad == 0 ]]; then
                            delta_read=$osm_read
                        fi
                    fi
                    ;;
                nbdcopy) run_nbdcopy ;;
                qemu_img) run_qemu_img ;;
            esac
            got=$(checksum "$scenario" "$loopdev")
            [[ $got == "$want" ]] || die "$scenario: $tool produced a wrong copy (target $got, source $want)"
            log "$scenario run $((r + 1))/$repeat: $tool ${run_s} s, verified$extra"
            times[$tool]+="$run_s "
        done
    done
    stop_nbdkit
    log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    # shellcheck disable=SC2086 # word splitting of the time lists is intended
    {
        osm_m=$(median ${times[osm]})
        nbdcopy_m=$(median ${times[nbdcopy]})
        qemu_m=$(median ${times[qemu_img]})
    }
    ratio=$(awk -v n="$nbdcopy_m" -v o="$osm_m" 'BEGIN { if (o > 0) printf "%.2f", n / o; else print "inf" }')
    printf 'scenario=%s osm_s=%s nbdcopy_s=%s qemu_img_s=%s ratio_vs_nbdcopy=%s\n' \
        "$scenario" "$osm_m" "$nbdcopy_m" "$qemu_m" "$ratio"
    if [[ $scenario == delta1 ]]; then
        printf 'delta1_bytes_read=%s delta1_bytes_listed=%s\n' "$delta_read" "$delta_listed"
    fi
    unset times
done

((delta_bad == 0)) || die "delta1: osm read $delta_read bytes but the extent list holds $delta_listed"
log "done"
