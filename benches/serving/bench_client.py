"""Helper for benches/serving/run.sh: request bodies, seeding, reply checks,
one measured h2load run, and the summary table.

Subcommands (run.sh calls them; each is usable by hand):

  bodies  --out DIR
      writes DIR/{check,score,priority}.bin: length-prefixed gRPC frames
      (0x00, 4-byte big-endian length, protobuf bytes) for h2load -d.
  seed    --target HOST:PORT --accounts N --csv PATH
      UpsertAccounts N Telco-like accounts acct-0 .. acct-(N-1).
  compare --ours HOST:PORT --python HOST:PORT --body DIR/score.bin
      sends the same ScoreAccounts bytes to both servers and checks that the
      answers agree (probability, health, log-odds, attributions: 1e-9).
  measure --name NAME --target HOST:PORT --path /svc/Method --body FILE
          --kind check|score|priority --results FILE [--metrics URL] ...
      checks the body's reply with grpcio and nghttp (grpc-status 0), then
      runs h2load, then appends one JSON line of figures to --results.
      run.sh wraps the whole subcommand in `flock /tmp/bench.lock`.
  table   --results FILE
      prints the table of medians and ratios.

Only 127.0.0.1 is contacted.
"""

import argparse
import csv
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import urllib.request

import grpc

from healthscore.v1 import health_score_pb2 as pb
from healthscore.v1 import health_score_pb2_grpc as rpc

# README's Python client example: the first Telco row, every feature given.
EXAMPLE_ID = "7590-VHVEG"
EXAMPLE = {
    "gender": "Female", "SeniorCitizen": False, "Partner": "Yes", "Dependents": "No",
    "tenure": 1, "PhoneService": "No", "MultipleLines": "No phone service",
    "InternetService": "DSL", "OnlineSecurity": "No", "OnlineBackup": "Yes",
    "DeviceProtection": "No", "TechSupport": "No", "StreamingTV": "No",
    "StreamingMovies": "No", "Contract": "Month-to-month", "PaperlessBilling": "Yes",
    "PaymentMethod": "Electronic check", "MonthlyCharges": 29.85, "TotalCharges": 29.85,
}
# README: "7590-VHVEG: churn 61.7%".
EXAMPLE_CHURN = 0.617

# The id whose priority is asked for (seeded accounts are acct-0 ..).
PRIORITY_ID = "acct-7"


def feature(value):
    # bool before int: in Python, True is also an int.
    if isinstance(value, bool):
        return pb.FeatureValue(bool_value=value)
    if isinstance(value, (int, float)):
        return pb.FeatureValue(number_value=value)
    return pb.FeatureValue(string_value=value)


def frame(message_bytes):
    """A gRPC length-prefixed message, uncompressed."""
    return b"\x00" + len(message_bytes).to_bytes(4, "big") + message_bytes


def unframe(body):
    assert body[0] == 0, "compressed frames are not used"
    n = int.from_bytes(body[1:5], "big")
    assert len(body) == 5 + n, f"frame length {n} but {len(body) - 5} bytes follow"
    return body[5:]


def score_request():
    return pb.ScoreAccountsRequest(
        accounts=[pb.Account(account_id=EXAMPLE_ID, features={k: feature(v) for k, v in EXAMPLE.items()})],
        max_attributions=3,
    )


def cmd_bodies(args):
    # grpc.health.v1.HealthCheckRequest{service: ""} encodes to no bytes.
    bodies = {
        "check": b"",
        "score": score_request().SerializeToString(),
        "priority": pb.GetPriorityRequest(account_ids=[PRIORITY_ID]).SerializeToString(),
    }
    for name, message in bodies.items():
        with open(f"{args.out}/{name}.bin", "wb") as f:
            f.write(frame(message))
        print(f"{args.out}/{name}.bin: {5 + len(message)} bytes")


def cmd_seed(args):
    numeric = {"tenure", "MonthlyCharges", "TotalCharges"}
    with open(args.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    upserts = []
    for i in range(args.accounts):
        row = rows[i % len(rows)]
        features = {}
        for name, cell in row.items():
            if name in ("customerID", "Churn") or not cell.strip():
                continue  # a blank TotalCharges is filled by the model
            features[name] = feature(float(cell) if name in numeric else cell)
        upserts.append(
            pb.AccountUpsert(
                account_id=f"acct-{i}",
                profile=pb.AccountProfile(
                    segment=["smb", "mid", "enterprise"][i % 3],
                    region=["emea", "amer", "apac"][i % 3],
                    annual_contract_value=1000.0 * (1 + (i * 7919) % 100),
                ),
                features=features,
            )
        )
    started = time.monotonic()
    with grpc.insecure_channel(args.target) as channel:
        stub = rpc.HealthScoreServiceStub(channel)
        for start in range(0, len(upserts), 1000):
            reply = stub.UpsertAccounts(pb.UpsertAccountsRequest(accounts=upserts[start : start + 1000]), timeout=60)
            bad = [r for r in reply.results if r.HasField("error")]
            if bad:
                sys.exit(f"seeding failed: {bad[0].account_id}: {bad[0].error.message}")
    print(f"seeded {args.accounts} accounts in {time.monotonic() - started:.2f} s")


def call_raw(target, path, body, timeout=10):
    """Sends exactly the framed body's message bytes and returns the reply's
    bytes; grpcio raises grpc.RpcError on any non-OK grpc-status."""
    with grpc.insecure_channel(target) as channel:
        method = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return method(unframe(body), timeout=timeout)


def check_reply(kind, reply):
    """Raises AssertionError unless reply (message bytes) is the right answer."""
    if kind == "check":
        # HealthCheckResponse{status: SERVING (1)}.
        assert reply == b"\x08\x01", f"Health/Check answered {reply!r}, not SERVING"
        return "SERVING"
    if kind == "score":
        response = pb.ScoreAccountsResponse.FromString(reply)
        assert len(response.scores) == 1, f"{len(response.scores)} scores for one account"
        s = response.scores[0]
        assert not s.HasField("error"), f"account error: {s.error.message}"
        assert s.account_id == EXAMPLE_ID, s.account_id
        assert abs(s.churn_probability - EXAMPLE_CHURN) < 5e-4, f"churn {s.churn_probability}"
        assert len(s.attributions) == 3, f"{len(s.attributions)} attributions"
        assert s.band == pb.HEALTH_BAND_AT_RISK, pb.HealthBand.Name(s.band)
        return f"churn {s.churn_probability:.6f}, {pb.HealthBand.Name(s.band)}, top {s.attributions[0].feature}"
    if kind == "priority":
        response = pb.GetPriorityResponse.FromString(reply)
        assert len(response.priorities) == 1, f"{len(response.priorities)} priorities"
        p = response.priorities[0]
        assert p.account_id == PRIORITY_ID and p.known, f"priority for {p.account_id}, known={p.known}"
        return f"priority {p.priority:.1f} {pb.PriorityTier.Name(p.tier)}"
    raise ValueError(kind)


def h2_headers():
    return ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def check_trailer(target, path, body_file):
    """Sends the body with nghttp (the HTTP/2 stack h2load is built on) and
    requires `grpc-status: 0` in the trailers."""
    out = subprocess.run(
        ["nghttp", "-v", "-n", "-d", body_file, *h2_headers(), f"http://{target}{path}"],
        capture_output=True, text=True, errors="replace", timeout=30,
    ).stdout
    statuses = re.findall(r"grpc-status: (\d+)", out)
    assert statuses == ["0"], f"nghttp saw grpc-status {statuses or 'none'}:\n{out[-2000:]}"


def scrape(url):
    """Counts of healthscore_rpc_requests_total per (rpc, code)."""
    if not url:
        return {}
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    counts = {}
    for m in re.finditer(r'^healthscore_rpc_requests_total\{([^}]*)\} (\S+)', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        counts[(labels.get("rpc"), labels.get("code"))] = float(m.group(2))
    return counts


def parse_h2load(out):
    """The figures h2load prints: throughput, counts, request-time stats."""
    def grab(pattern):
        m = re.search(pattern, out, re.M)
        if not m:
            raise SystemExit(f"h2load output lacks {pattern!r}:\n{out}")
        return m.groups()

    (rps,) = grab(r"^finished in \S+, ([\d.]+) req/s")
    total, succeeded, failed, errored, timeout = grab(
        r"^requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
    )
    ok2xx, s3xx, s4xx, s5xx = grab(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
    rmin, rmax, rmean, rsd = grab(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)")
    return {
        "rps": float(rps), "total": int(total), "succeeded": int(succeeded), "failed": int(failed),
        "errored": int(errored), "timeout": int(timeout), "status_2xx": int(ok2xx),
        "status_other": int(s3xx) + int(s4xx) + int(s5xx),
        "min_ms": to_ms(rmin), "max_ms": to_ms(rmax), "mean_ms": to_ms(rmean), "sd_ms": to_ms(rsd),
    }


def to_ms(text):
    for unit, factor in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise ValueError(text)


def percentiles(log_file):
    """p50/p99/p99.9 in ms from h2load --log-file (third column: microseconds
    from a request's start to the end of its response)."""
    times = []
    with open(log_file, encoding="utf-8") as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) >= 3:
                times.append(int(cols[2]))
    times.sort()
    if not times:
        return {}
    at = lambda q: times[min(len(times) - 1, int(len(times) * q))] / 1e3  # noqa: E731
    return {"logged": len(times), "p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999)}


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds():
    """CPU seconds all cores have spent busy so far (/proc/stat; idle and
    iowait excluded, guest already counted in user)."""
    with open("/proc/stat", encoding="ascii") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cmd_measure(args):
    with open(args.body, "rb") as f:
        body = f.read()
    # 1. The exact bytes h2load will send get a correct, OK answer.
    try:
        what = check_reply(args.kind, call_raw(args.target, args.path, body))
    except grpc.RpcError as e:
        sys.exit(f"{args.name}: the check call failed: {e.code()} {e.details()}")
    check_trailer(args.target, args.path, args.body)
    before = scrape(args.metrics)

    # 2. The load.
    log_file = f"{args.results}.{args.name}.{args.rep}.log"
    cmd = [
        "h2load", "-t", str(args.threads), "-c", str(args.clients), "-m", str(args.streams),
        "-D", str(args.seconds), "--warm-up-time", str(args.warmup),
        "-d", args.body, *h2_headers(), "--log-file", log_file,
        f"http://{args.target}{args.path}",
    ]
    server_cpu, h2load_cpu, busy = cpu_seconds(args.server_pid), children_cpu(), machine_busy_seconds()
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + args.warmup + 120)
    wall = time.monotonic() - started
    server_cpu, h2load_cpu = cpu_seconds(args.server_pid) - server_cpu, children_cpu() - h2load_cpu
    busy = machine_busy_seconds() - busy
    if out.returncode != 0:
        sys.exit(f"h2load failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    figures = parse_h2load(out.stdout)
    figures.update(percentiles(log_file))
    # CPU over the whole h2load run (warm-up included) in cores, and the
    # server's CPU per request at the measured rate. "other" is everything
    # else busy on the machine meanwhile (another build, say): a run with
    # more than --max-other cores of it was contended.
    figures.update(
        server_cores=server_cpu / wall,
        h2load_cores=h2load_cpu / wall,
        other_cores=max(0.0, (busy - server_cpu - h2load_cpu) / wall),
        server_cpu_us_per_req=server_cpu / wall / figures["rps"] * 1e6,
    )
    figures["contended"] = figures["other_cores"] > args.max_other
    subprocess.run(["rm", "-f", log_file])

    # 3. The server's own count of answers by gRPC code, when it has one
    #    (our server's metrics cover the HealthScoreService RPCs, not Check).
    after = scrape(args.metrics)
    codes = {}
    for (rpc_name, code), n in after.items():
        delta = n - before.get((rpc_name, code), 0.0)
        if rpc_name == args.rpc_label and delta:
            codes[code] = int(delta)
    figures.update(name=args.name, rep=args.rep, checked=what, server_codes=codes, cmd=" ".join(cmd))
    bad = figures["failed"] + figures["errored"] + figures["timeout"]
    non_ok = sum(n for code, n in codes.items() if code.lower() != "ok")
    discard = figures["contended"] and args.discard_if_contended
    print(
        f"  {args.name:<22} rep {args.rep}: {figures['rps']:>9.0f} req/s  p50 {figures.get('p50_ms', 0):.3f} ms  "
        f"p99 {figures.get('p99_ms', 0):.3f} ms  cores: server {figures['server_cores']:.2f}, "
        f"h2load {figures['h2load_cores']:.2f}, other {figures['other_cores']:.2f}  failures {bad}  "
        f"server codes {codes or '-'}" + ("  CONTENDED, discarded" if discard else "")
    )
    # (h2load's 2xx count can differ from "succeeded" by a few requests that
    # straddle the warm-up boundary, so only non-2xx statuses count here.)
    if bad or non_ok or figures["status_other"]:
        sys.exit(f"{args.name}: errors under load: h2load failed/errored/timeout {bad}, "
                 f"non-2xx {figures['status_other']}, non-OK gRPC codes {non_ok} {codes}")
    if discard:
        sys.exit(3)  # run.sh waits and measures again
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(figures) + "\n")


def cmd_compare(args):
    with open(args.body, "rb") as f:
        body = f.read()
    path = "/healthscore.v1.HealthScoreService/ScoreAccounts"
    ours = pb.ScoreAccountsResponse.FromString(call_raw(args.ours, path, body)).scores[0]
    peer = pb.ScoreAccountsResponse.FromString(call_raw(args.python, path, body)).scores[0]
    for s in (ours, peer):
        assert not s.HasField("error"), s.error.message
    diffs = {
        "churn_probability": abs(ours.churn_probability - peer.churn_probability),
        "health_score": abs(ours.health_score - peer.health_score),
        "churn_log_odds": abs(ours.churn_log_odds - peer.churn_log_odds),
        "base_value": abs(ours.base_value - peer.base_value),
        "attributions": max(abs(a.contribution - b.contribution) for a, b in zip(ours.attributions, peer.attributions)),
        "category_scores": max(
            abs(a.health_score - b.health_score) for a, b in zip(ours.category_scores, peer.category_scores)
        ),
    }
    same_shape = (
        [a.feature for a in ours.attributions] == [a.feature for a in peer.attributions]
        and [a.direction for a in ours.attributions] == [a.direction for a in peer.attributions]
        and [c.category for c in ours.category_scores] == [c.category for c in peer.category_scores]
        and ours.band == peer.band
        and ours.model_version == peer.model_version
        and list(ours.imputed_features) == list(peer.imputed_features)
    )
    print(f"ours:   churn {ours.churn_probability:.15f} ({ours.churn_probability:.1%}), health {ours.health_score:.0f}, "
          f"{pb.HealthBand.Name(ours.band)}, {ours.model_version}, "
          + ", ".join(f"{a.feature} {a.contribution:+.3f}" for a in ours.attributions))
    print(f"python: churn {peer.churn_probability:.15f} ({peer.churn_probability:.1%}), health {peer.health_score:.0f}, "
          f"{pb.HealthBand.Name(peer.band)}, {peer.model_version}, "
          + ", ".join(f"{a.feature} {a.contribution:+.3f}" for a in peer.attributions))
    print("largest differences: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    if not same_shape or max(diffs.values()) > 1e-9 or f"{ours.churn_probability:.1%}" != "61.7%":
        sys.exit("the Python peer does not answer as our server does")


def cmd_table(args):
    runs = [json.loads(line) for line in open(args.results, encoding="utf-8")]
    names = list(dict.fromkeys(r["name"] for r in runs))
    by = {n: [r for r in runs if r["name"] == n] for n in names}
    med = lambda n, k: statistics.median(r[k] for r in by[n] if k in r)  # noqa: E731

    print(f"{'target':<26} {'reps':>4} {'req/s (median)':>15} {'req/s per rep':>26} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'mean ms':>8} {'max ms':>8} {'errors':>6} "
          f"{'srv cores':>9} {'srv us/req':>10} {'h2load cores':>12} {'other cores':>11}")
    for n in names:
        reps = "/".join(f"{r['rps']:.0f}" + ("*" if r.get("contended") else "") for r in by[n])
        errors = sum(r["failed"] + r["errored"] + r["timeout"] for r in by[n])
        print(f"{n:<26} {len(by[n]):>4} {med(n, 'rps'):>15.0f} {reps:>26} {med(n, 'p50_ms'):>8.3f} "
              f"{med(n, 'p99_ms'):>8.3f} {med(n, 'p999_ms'):>9.3f} {med(n, 'mean_ms'):>8.3f} "
              f"{max(r['max_ms'] for r in by[n]):>8.3f} {errors:>6} {med(n, 'server_cores'):>9.2f} "
              f"{med(n, 'server_cpu_us_per_req'):>10.1f} {med(n, 'h2load_cores'):>12.2f} "
              f"{med(n, 'other_cores'):>11.2f}")
    print("(latency: medians over reps of per-rep percentiles from h2load --log-file; max: the largest over reps;")
    print(" cores: CPU time over the run's wall time, from /proc and getrusage; us/req = srv cores / req/s;")
    print(" other: the rest of the machine's busy time meanwhile; * marks a rep kept although contended)")

    def ratio(a, b, target):
        if a not in by or b not in by:
            return
        per_rep = [x["rps"] / y["rps"] for x, y in zip(by[a], by[b])]
        value = med(a, "rps") / med(b, "rps")
        verdict = "no target" if target is None else f"target >= {target}: " + ("met" if value >= target else "MISSED")
        print(f"{a + ' / ' + b:<44} req/s {value:>7.2f}  (per rep: {', '.join(f'{r:.2f}' for r in per_rep)})  {verdict}")
        # The same ratio from server CPU per request, which another process
        # on the cores disturbs far less than req/s.
        cpu = med(b, "server_cpu_us_per_req") / med(a, "server_cpu_us_per_req")
        print(f"{'':<44} CPU   {cpu:>7.2f}  (server CPU us per request, {b} / {a})")

    print()
    ratio("ours ScoreAccounts", "ours Check", 0.7)
    ratio("ours GetPriority", "ours Check", None)
    ratio("ours ScoreAccounts", "python ScoreAccounts", 20.0)
    contended = sum(bool(r.get("contended")) for r in runs)
    if contended:
        print(f"\n{contended} of {len(runs)} reps were kept although other work used the cores (marked *);"
              " their req/s understate, CPU per request much less so")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bodies")
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_bodies)

    p = sub.add_parser("seed")
    p.add_argument("--target", required=True)
    p.add_argument("--accounts", type=int, default=500)
    p.add_argument("--csv", required=True)
    p.set_defaults(run=cmd_seed)

    p = sub.add_parser("compare")
    p.add_argument("--ours", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--body", required=True)
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser("measure")
    p.add_argument("--name", required=True)
    p.add_argument("--rep", type=int, default=1)
    p.add_argument("--target", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--body", required=True)
    p.add_argument("--kind", choices=["check", "score", "priority"], required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--metrics", help="our server's /metrics URL, to count answers by gRPC code")
    p.add_argument("--rpc-label", default="", help="the rpc label of this RPC in those metrics")
    p.add_argument("--server-pid", type=int, required=True, help="the server's process id, for its CPU time")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-other", type=float, default=0.15,
                   help="cores of other work on the machine above which a run counts as contended")
    p.add_argument("--discard-if-contended", action="store_true",
                   help="exit 3 without recording a contended run (the caller retries)")
    p.set_defaults(run=cmd_measure)

    p = sub.add_parser("table")
    p.add_argument("--results", required=True)
    p.set_defaults(run=cmd_table)

    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
