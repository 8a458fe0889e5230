"""A Python peer of healthscore's ScoreAccounts, for the serving benchmark.

It serves the same proto (healthscore.v1.HealthScoreService/ScoreAccounts)
the way a typical Python team would: grpcio's `grpc.server` on a
ThreadPoolExecutor, and scikit-learn's `LogisticRegression.predict_proba`
with the shipped model's coefficients loaded into `coef_` / `intercept_` /
`classes_`. Only ScoreAccounts is implemented; every other RPC answers
UNIMPLEMENTED (the generated servicer's default).

The design vector follows src/scoring.rs exactly, column by column of the
artifact (models/telco-churn.json):

* numeric: clip to [low, high] if the feature has a clip, then `log1p` if
  its transform says so;
* boolean: 1.0 / 0.0 (a bool, the number 0 or 1, or a word from the
  artifact's `booleans` lists, case-insensitive);
* categorical: one-hot over the feature's `levels`; an unseen level is all
  zeros ("no level") and is reported as imputed;

then every column is standardised, `(x - center) / scale`. Blank text or an
absent feature is missing: filled with the feature's `fill` (reported as
imputed) or refused when it has none. Attributions are
`coefficient * (z - training_mean)` summed over a feature's columns, the
exact Shapley values of a linear model against the average training account,
as the Rust server computes them.

The answer carries what the Rust server's does: churn probability, health
score (100 * (1 - p)), band, the top `max_attributions` attributions with
their direction, base value, log-odds, per-category scores, imputed features
and the model version, with a per-account `error` for an account that cannot
be scored.

Run (from the repository root, with the generated classes on PYTHONPATH):

    python benches/serving/python_peer.py --listen 127.0.0.1:50061 \
        --model models/telco-churn.json [--workers 10]

It writes "ready" to stdout once listening, and at exit (SIGTERM/SIGINT) the
number of requests it answered to --count-file, if given.
"""

import argparse
import json
import math
import signal
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
from sklearn.linear_model import LogisticRegression

from healthscore.v1 import health_score_pb2 as pb
from healthscore.v1 import health_score_pb2_grpc as rpc

# The framework's categories in the order the server reports them (the
# order of the proto enum and of src/template.rs's Category).
CATEGORY_ORDER = ["engagement", "satisfaction", "support", "adoption", "financial", "profile"]


class ScoreError(Exception):
    """An account that cannot be scored: a proto reason and the feature."""

    def __init__(self, reason, feature, message):
        super().__init__(message)
        self.reason = reason
        self.feature = feature


class ChurnModel:
    """The artifact as a scikit-learn LogisticRegression plus its encoding."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            artifact = json.load(f)
        self.version = artifact["model_version"]
        self.bands = artifact["bands"]
        self.true_words = {w.lower() for w in artifact["booleans"]["true_values"]}
        self.false_words = {w.lower() for w in artifact["booleans"]["false_values"]}
        self.features = artifact["features"]
        self.index = {f["name"]: i for i, f in enumerate(self.features)}

        centers, scales, coefs, means = [], [], [], []
        self.first_column = []  # per feature: index of its first column
        for f in self.features:
            self.first_column.append(len(coefs))
            for c in f["columns"]:
                centers.append(c["center"])
                scales.append(c["scale"])
                coefs.append(c["coefficient"])
                means.append(c["training_mean"])
            f["level_index"] = {level: k for k, level in enumerate(f["levels"])}
        self.center = np.array(centers)
        self.scale = np.array(scales)
        self.training_mean = np.array(means)
        self.n_columns = len(coefs)

        # A fitted-looking LogisticRegression: scikit-learn needs only these
        # attributes for predict_proba.
        self.clf = LogisticRegression()
        self.clf.coef_ = np.array([coefs])
        self.clf.intercept_ = np.array([artifact["intercept"]])
        self.clf.classes_ = np.array([0, 1])
        self.clf.n_features_in_ = self.n_columns
        self.coef = self.clf.coef_[0]

        # Log-odds of the average training account (z = training_mean).
        self.base_value = float(artifact["intercept"] + self.coef @ self.training_mean)
        self.categories = [c for c in CATEGORY_ORDER if any(f["category"] == c for f in self.features)]
        self.category_of = [self.categories.index(f["category"]) for f in self.features]
        self.category_enum = [
            pb.FeatureCategory.Value("FEATURE_CATEGORY_" + f["category"].upper()) for f in self.features
        ]

    # -- encoding -----------------------------------------------------------

    def _numeric(self, f, x):
        if not math.isfinite(x):
            raise ScoreError(pb.ACCOUNT_ERROR_REASON_INVALID_VALUE, f["name"], f"{x} is not a finite number")
        if f["clip"] is not None:
            x = min(max(x, f["clip"][0]), f["clip"][1])
        if f["transform"] == "log1p":
            if x <= -1.0:
                raise ScoreError(pb.ACCOUNT_ERROR_REASON_INVALID_VALUE, f["name"], f"log1p needs a value above -1, got {x}")
            x = math.log1p(x)
        return x

    def _boolean(self, f, kind, value):
        if kind == "bool_value":
            return 1.0 if value else 0.0
        if kind == "number_value":
            if value in (0.0, 1.0):
                return value
            raise ScoreError(pb.ACCOUNT_ERROR_REASON_INVALID_VALUE, f["name"], f"a boolean takes 0 or 1, got {value}")
        word = value.strip().lower()
        if word in self.true_words:
            return 1.0
        if word in self.false_words:
            return 0.0
        raise ScoreError(pb.ACCOUNT_ERROR_REASON_INVALID_VALUE, f["name"], f"{value!r} is not a boolean word")

    def _put(self, x, i, f, kind, value, imputed):
        """Writes feature i's raw (unstandardised) columns into x."""
        col = self.first_column[i]
        if f["kind"] == "numeric":
            if kind != "number_value":
                raise ScoreError(pb.ACCOUNT_ERROR_REASON_WRONG_TYPE, f["name"], f"feature {f['name']!r} is numeric")
            x[col] = self._numeric(f, value)
        elif f["kind"] == "boolean":
            x[col] = self._boolean(f, kind, value)
        else:
            if kind != "string_value":
                raise ScoreError(pb.ACCOUNT_ERROR_REASON_WRONG_TYPE, f["name"], f"feature {f['name']!r} is categorical")
            k = f["level_index"].get(value)
            if k is None:
                imputed.append(f["name"])  # unseen level: scored as no level
            else:
                x[col + k] = 1.0

    def _fill(self, x, i, f, imputed):
        fill = f["fill"]
        if fill is None:
            raise ScoreError(pb.ACCOUNT_ERROR_REASON_MISSING_FEATURE, f["name"], f"feature {f['name']!r} is missing")
        imputed.append(f["name"])
        col = self.first_column[i]
        if f["kind"] == "numeric":
            x[col] = self._numeric(f, float(fill))
        elif f["kind"] == "boolean":
            x[col] = 1.0 if fill else 0.0
        elif fill in f["level_index"]:
            x[col + f["level_index"][fill]] = 1.0

    def design(self, features):
        """The standardised design row of one account, and its imputed features."""
        x = np.zeros(self.n_columns)
        seen = [False] * len(self.features)
        imputed = []
        for name, fv in features.items():
            i = self.index.get(name)
            if i is None:
                raise ScoreError(pb.ACCOUNT_ERROR_REASON_UNKNOWN_FEATURE, name, f"unknown feature {name!r}")
            kind = fv.WhichOneof("kind")
            if kind is None or (kind == "string_value" and not fv.string_value.strip()):
                continue  # missing: filled below
            seen[i] = True
            self._put(x, i, self.features[i], kind, getattr(fv, kind), imputed)
        for i, f in enumerate(self.features):
            if not seen[i]:
                self._fill(x, i, f, imputed)
        return (x - self.center) / self.scale, imputed

    # -- scoring ------------------------------------------------------------

    def band(self, health):
        if health >= self.bands["healthy_min"]:
            return pb.HEALTH_BAND_HEALTHY
        if health >= self.bands["watch_min"]:
            return pb.HEALTH_BAND_WATCH
        return pb.HEALTH_BAND_AT_RISK

    def score(self, account, max_attributions):
        z, imputed = self.design(account.features)
        p = float(self.clf.predict_proba(z.reshape(1, -1))[0, 1])
        # Per-column contributions against the average account, summed back
        # into their source feature (one-hot levels included).
        per_column = self.coef * (z - self.training_mean)
        per_feature = np.add.reduceat(per_column, self.first_column)
        log_odds = self.base_value + float(per_feature.sum())
        health = 100.0 * (1.0 - p)

        order = sorted(range(len(per_feature)), key=lambda i: -abs(per_feature[i]))
        if max_attributions:
            order = order[:max_attributions]
        attributions = []
        for i in order:
            c = float(per_feature[i])
            direction = (
                pb.DIRECTION_RAISES_CHURN if c > 0 else pb.DIRECTION_LOWERS_CHURN if c < 0 else pb.DIRECTION_NEUTRAL
            )
            attributions.append(
                pb.Attribution(
                    feature=self.features[i]["name"],
                    category=self.category_enum[i],
                    contribution=c,
                    direction=direction,
                )
            )
        by_category = np.zeros(len(self.categories))
        np.add.at(by_category, self.category_of, per_feature)
        category_scores = [
            pb.CategoryScore(
                category=pb.FeatureCategory.Value("FEATURE_CATEGORY_" + name.upper()),
                contribution=float(c),
                health_score=100.0 * (1.0 - 1.0 / (1.0 + math.exp(-(self.base_value + c)))),
            )
            for name, c in zip(self.categories, by_category)
        ]
        return pb.AccountScore(
            account_id=account.account_id,
            churn_probability=p,
            health_score=health,
            band=self.band(health),
            attributions=attributions,
            base_value=self.base_value,
            churn_log_odds=log_odds,
            category_scores=category_scores,
            model_version=self.version,
            imputed_features=imputed,
        )


class Servicer(rpc.HealthScoreServiceServicer):
    """ScoreAccounts only; the rest stays UNIMPLEMENTED."""

    def __init__(self, model, max_batch=10_000):
        self.model = model
        self.max_batch = max_batch
        self.answered = 0
        self.lock = threading.Lock()

    def ScoreAccounts(self, request, context):
        n = len(request.accounts)
        if n == 0 or n > self.max_batch:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a batch holds 1 to {self.max_batch} accounts, got {n}")
        scores, seen = [], set()
        for account in request.accounts:
            try:
                if not account.account_id:
                    raise ScoreError(pb.ACCOUNT_ERROR_REASON_MISSING_ACCOUNT_ID, "", "account_id is empty")
                if account.account_id in seen:
                    raise ScoreError(pb.ACCOUNT_ERROR_REASON_DUPLICATE_ACCOUNT_ID, "", "duplicate account_id")
                seen.add(account.account_id)
                scores.append(self.model.score(account, request.max_attributions))
            except ScoreError as e:
                scores.append(
                    pb.AccountScore(
                        account_id=account.account_id,
                        model_version=self.model.version,
                        error=pb.AccountError(reason=e.reason, feature=e.feature, message=str(e)),
                    )
                )
        with self.lock:
            self.answered += 1
        return pb.ScoreAccountsResponse(scores=scores)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50061")
    parser.add_argument("--model", default="models/telco-churn.json")
    parser.add_argument("--workers", type=int, default=10, help="ThreadPoolExecutor size")
    parser.add_argument("--count-file", help="where to write the number of answered requests at exit")
    args = parser.parse_args()

    servicer = Servicer(ChurnModel(args.model))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    rpc.add_HealthScoreServiceServicer_to_server(servicer, server)
    if server.add_insecure_port(args.listen) == 0:
        sys.exit(f"cannot listen on {args.listen}")
    server.start()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    server.stop(grace=1).wait()
    if args.count_file:
        with open(args.count_file, "w", encoding="utf-8") as f:
            f.write(f"{servicer.answered}\n")


if __name__ == "__main__":
    main()
