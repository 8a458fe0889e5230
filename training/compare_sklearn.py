"""Fit scikit-learn's reference recipe on exactly the split healthscore used.

Usage (from the repository root):
    cargo run --release --bin healthscore-train -- \
        --data training/data/telco-customer-churn/Telco-Customer-Churn.csv \
        --template training/templates/telco.toml \
        --out /tmp/telco.json --test-predictions /tmp/telco-test.csv
    python3 training/compare_sklearn.py /tmp/telco-test.csv

Needs pandas and scikit-learn. The recipe is the one in the data's README:
median-imputed, standardised numeric columns; most-frequent-imputed one-hot
categoricals; LogisticRegression(max_iter=1000) with C = 1.
"""

import sys

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

DATA = "training/data/telco-customer-churn/Telco-Customer-Churn.csv"


def main(predictions_csv: str) -> None:
    df = pd.read_csv(DATA)
    df["TotalCharges"] = pd.to_numeric(df["TotalCharges"], errors="coerce")
    y = (df["Churn"] == "Yes").astype(int)
    num = ["SeniorCitizen", "tenure", "MonthlyCharges", "TotalCharges"]
    cat = [c for c in df.columns if c not in num + ["customerID", "Churn"]]
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                cat,
            ),
        ]
    )
    model = Pipeline([("pre", pre), ("lr", LogisticRegression(max_iter=1000))])

    ours = pd.read_csv(predictions_csv).set_index("account_id")["churn_probability"]
    test = df["customerID"].isin(ours.index)
    model.fit(df.loc[~test, num + cat], y[~test])
    reference = model.predict_proba(df.loc[test, num + cat])[:, 1]
    mine = ours.loc[df.loc[test, "customerID"]].to_numpy()

    print(f"test rows {test.sum()}, churned {y[test].sum()}")
    print(f"scikit-learn  ROC AUC {roc_auc_score(y[test], reference):.4f}  "
          f"log loss {log_loss(y[test], reference):.4f}")
    print(f"healthscore   ROC AUC {roc_auc_score(y[test], mine):.4f}  "
          f"log loss {log_loss(y[test], mine):.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/telco-test.csv")
