//! `healthscore-rows` on real files: point-in-time rows, no leakage, the
//! same feature values as the server computes, and bad inputs reported
//! with file, line and column.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    process::{Command, Output},
};

use healthscore::{
    accounts::{Registry, lookback_days, score_state},
    artifact::ModelArtifact,
    scoring::{Model, Scored, Value},
    signals::{Event, SignalKind},
    store::{AccountRecord, SignalRecord, Store, StoredValue},
};
use tempfile::TempDir;

#[path = "support/postgres.rs"]
mod postgres;

const ROWS: &str = env!("CARGO_BIN_EXE_healthscore-rows");
const SIMULATE: &str = env!("CARGO_BIN_EXE_healthscore-simulate");
const TRAIN: &str = env!("CARGO_BIN_EXE_healthscore-train");

const TEMPLATE: &str = r#"
name = "pit"
id_column = "account_id"
date_column = "observed_at"
outcome = { column = "churned", positive = "yes", negative = "no" }
ignore = ["region"]

[history]
interval_days = 30
first_observation = 2024-04-01
last_observation = 2024-05-01
horizon_days = 30
renewal_gap_days = 30
data_end = 2024-08-01
extra_columns = ["region"]

[[feature]]
name = "logins_28d"
kind = "numeric"
category = "engagement"
signal = { kind = "login", aggregate = "count", window_days = 28 }

[[feature]]
name = "last_csat"
kind = "numeric"
category = "satisfaction"
missing = "median"
signal = { kind = "csat_response", aggregate = "last", window_days = 90 }

[[feature]]
name = "plan"
kind = "categorical"
category = "financial"
"#;

const ACCOUNTS: &str = "\
account_id,name,region,plan,seats
A1,Acme,emea,growth,10
A2,Beta,apac,starter,5
";

// A1 renews 9 days after its first period ends (not churn); A2's period
// ends on 2024-05-20 and is never renewed (churn).
const SUBSCRIPTIONS: &str = "\
account_id,start,end
A1,2023-01-01,2024-01-01
A1,2024-01-10,
A2,2023-06-01,2024-05-20
";

const SIGNALS: &str = "\
event_id,account_id,kind,value,time
e1,A1,login,1,2024-03-10T08:00:00Z
e2,A1,login,1,2024-03-20T08:00:00Z
e3,A1,csat_response,4,2024-03-25T12:00:00Z
e4,A2,login,1,2024-03-30T23:59:59Z
";

/// Writes the input files into a fresh directory.
fn inputs(accounts: &str, subscriptions: &str, signals: &str) -> TempDir {
    let dir = TempDir::new().unwrap();
    for (name, text) in [
        ("accounts.csv", accounts),
        ("subscriptions.csv", subscriptions),
        ("signals.csv", signals),
        ("template.toml", TEMPLATE),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn run(binary: &str, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .expect("the binary runs")
}

fn rows_command(dir: &Path) -> Output {
    let p = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    run(
        ROWS,
        &[
            "--quiet",
            "--input",
            &p(""),
            "--template",
            &p("template.toml"),
            "--out",
            &p("rows.csv"),
        ],
    )
}

/// Builds the rows and returns them as text.
fn rows(dir: &Path) -> String {
    let output = rows_command(dir);
    assert!(
        output.status.success(),
        "healthscore-rows failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(dir.join("rows.csv")).unwrap()
}

/// Runs on inputs that must be refused; returns the message.
fn refused(dir: &Path) -> String {
    let output = rows_command(dir);
    assert!(!output.status.success(), "bad input was accepted");
    String::from_utf8(output.stderr).unwrap().trim().to_owned()
}

fn row<'a>(rows: &'a str, account: &str, date: &str) -> &'a str {
    rows.lines()
        .find(|l| l.starts_with(&format!("{account},{date},")))
        .unwrap_or_else(|| panic!("no row for {account} on {date} in\n{rows}"))
}

#[test]
fn rows_hold_features_as_of_each_date_and_churn_within_the_horizon() {
    let dir = inputs(ACCOUNTS, SUBSCRIPTIONS, SIGNALS);

    let rows = rows(dir.path());

    assert_eq!(
        rows,
        "account_id,observed_at,churned,logins_28d,last_csat,plan,region\n\
         A1,2024-04-01,no,2,4,growth,emea\n\
         A1,2024-05-01,no,0,4,growth,emea\n\
         A2,2024-04-01,no,1,,starter,apac\n\
         A2,2024-05-01,yes,0,,starter,apac\n"
    );
}

#[test]
fn a_planted_future_event_changes_nothing_before_it_and_counts_after() {
    // Planted: a login at the very instant of the first observation (not
    // strictly before it), a login and a CSAT of 1 after it.
    let planted = format!(
        "{SIGNALS}\
         p1,A1,login,1,2024-04-01T00:00:00Z\n\
         p2,A1,login,1,2024-04-15T10:00:00Z\n\
         p3,A1,csat_response,1,2024-04-20T10:00:00Z\n"
    );
    let (clean, with_future) = (
        inputs(ACCOUNTS, SUBSCRIPTIONS, SIGNALS),
        inputs(ACCOUNTS, SUBSCRIPTIONS, &planted),
    );

    let (clean, with_future) = (rows(clean.path()), rows(with_future.path()));

    assert_eq!(
        row(&clean, "A1", "2024-04-01"),
        row(&with_future, "A1", "2024-04-01")
    );
    assert_eq!(
        row(&clean, "A1", "2024-05-01"),
        "A1,2024-05-01,no,0,4,growth,emea"
    );
    // On 2024-05-01 the 28-day window starts 2024-04-03: the 04-15 login
    // counts, the one at 04-01 00:00 does not; the latest CSAT is the 1.
    assert_eq!(
        row(&with_future, "A1", "2024-05-01"),
        "A1,2024-05-01,no,1,1,growth,emea"
    );
}

#[test]
fn a_repeated_event_id_counts_once_as_the_server_stores_it_once() {
    let plain = inputs(ACCOUNTS, SUBSCRIPTIONS, SIGNALS);
    let repeated = inputs(
        ACCOUNTS,
        SUBSCRIPTIONS,
        &format!(
            "{SIGNALS}e2,A1,login,1,2024-03-20T08:00:00Z\ne2,A1,login,1,2024-03-21T08:00:00Z\n"
        ),
    );

    let output = rows_command(repeated.path());

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("from 4 signals (2 lines repeating an event id left out)"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(rows(repeated.path()), rows(plain.path()));
}

#[test]
fn rows_never_overwrite_their_inputs() {
    let dir = inputs(ACCOUNTS, SUBSCRIPTIONS, SIGNALS);
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    // The same signals file under another name, and a store file.
    std::fs::hard_link(p("signals.csv"), p("linked.csv")).unwrap();
    std::fs::write(p("store.db"), "not really a database").unwrap();
    let store_url = format!("sqlite://{}", p("store.db"));

    for (out, extra, clash, kept) in [
        ("signals.csv", None, "--input", "signals.csv"),
        ("linked.csv", None, "--input", "signals.csv"),
        (
            "store.db",
            Some(store_url.as_str()),
            "--database-url",
            "store.db",
        ),
    ] {
        let before = std::fs::read(p(kept)).unwrap();
        let mut args = vec!["--quiet", "--input", "", "--template", "", "--out", ""];
        let (input, template, out) = (p(""), p("template.toml"), p(out));
        args[2] = &input;
        args[4] = &template;
        args[6] = &out;
        if let Some(url) = extra {
            args.extend(["--database-url", url]);
        }
        let output = run(ROWS, &args);

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "is the same file as {clash}; writing it would destroy that file"
            )),
            "{stderr}"
        );
        assert_eq!(std::fs::read(p(kept)).unwrap(), before, "{kept} changed");
    }
}

#[test]
fn an_account_without_an_active_subscription_gets_no_row() {
    let lapsed = SUBSCRIPTIONS.replace("A1,2024-01-10,", "A1,2024-04-10,");

    let rows = rows(inputs(ACCOUNTS, &lapsed, SIGNALS).path());

    assert!(!rows.contains("A1,2024-04-01"), "{rows}");
    assert!(rows.contains("A1,2024-05-01"), "{rows}");
}

// --- bad inputs -------------------------------------------------------------

#[test]
fn overlapping_subscriptions_are_refused_with_both_lines() {
    let overlapping = format!("{SUBSCRIPTIONS}A2,2024-05-01,2024-06-01\n");
    let dir = inputs(ACCOUNTS, &overlapping, SIGNALS);

    let message = refused(dir.path());

    assert_eq!(
        message,
        format!(
            "error: {}, line 5, column 2 (start): period 2024-05-01..2024-06-01 of account \
             \"A2\" overlaps its period 2023-06-01..2024-05-20 on line 4",
            dir.path().join("subscriptions.csv").display()
        )
    );
}

#[test]
fn a_signal_for_an_unknown_account_is_refused() {
    let signals = format!("{SIGNALS}e5,A9,login,1,2024-03-01T00:00:00Z\n");
    let dir = inputs(ACCOUNTS, SUBSCRIPTIONS, &signals);

    assert_eq!(
        refused(dir.path()),
        format!(
            "error: {}, line 6, column 2 (account_id): account \"A9\" is not in accounts.csv",
            dir.path().join("signals.csv").display()
        )
    );
}

#[test]
fn dates_that_do_not_parse_are_refused() {
    let subscriptions = SUBSCRIPTIONS.replace("2024-05-20", "2024-05-32");
    let signals = SIGNALS.replace("2024-03-20T08:00:00Z", "2024-03-20 08:00");
    let (bad_date, bad_time) = (
        inputs(ACCOUNTS, &subscriptions, SIGNALS),
        inputs(ACCOUNTS, SUBSCRIPTIONS, &signals),
    );

    assert_eq!(
        refused(bad_date.path()),
        format!(
            "error: {}, line 4, column 3 (end): \"2024-05-32\" is not a date (expected YYYY-MM-DD)",
            bad_date.path().join("subscriptions.csv").display()
        )
    );
    assert_eq!(
        refused(bad_time.path()),
        format!(
            "error: {}, line 3, column 5 (time): \"2024-03-20 08:00\" is not a time (expected \
             RFC 3339, e.g. 2024-01-31T09:30:00Z)",
            bad_time.path().join("signals.csv").display()
        )
    );
}

#[test]
fn unknown_kinds_and_bad_values_are_refused() {
    let kind = SIGNALS.replace("e2,A1,login", "e2,A1,logon");
    let infinite = SIGNALS.replace("e2,A1,login,1", "e2,A1,login,inf");
    let out_of_range = SIGNALS.replace("csat_response,4", "csat_response,9");
    let dirs = [kind, infinite, out_of_range].map(|s| inputs(ACCOUNTS, SUBSCRIPTIONS, &s));
    let signals = |d: &TempDir| d.path().join("signals.csv").display().to_string();

    assert_eq!(
        refused(dirs[0].path()),
        format!(
            "error: {}, line 3, column 3 (kind): unknown signal kind \"logon\"",
            signals(&dirs[0])
        )
    );
    assert_eq!(
        refused(dirs[1].path()),
        format!(
            "error: {}, line 3, column 4 (value): value inf is not a finite number",
            signals(&dirs[1])
        )
    );
    assert_eq!(
        refused(dirs[2].path()),
        format!(
            "error: {}, line 4, column 4 (value): csat_response takes values from 1 to 5, got 9",
            signals(&dirs[2])
        )
    );
}

#[test]
fn a_label_window_past_the_data_end_is_refused() {
    let dir = inputs(ACCOUNTS, SUBSCRIPTIONS, SIGNALS);
    let template = TEMPLATE.replace("data_end = 2024-08-01", "data_end = 2024-06-01");
    std::fs::write(dir.path().join("template.toml"), template).unwrap();

    assert_eq!(
        refused(dir.path()),
        format!(
            "error: {}: the last observation (2024-05-01) plus lead, horizon and renewal gap \
             (60 days) runs past the end of the data (2024-06-01); labels there would be \
             unknown. Set an earlier `history.last_observation` or the real `history.data_end`",
            dir.path().join("template.toml").display()
        )
    );
}

// --- train/serve identity -----------------------------------------------------

fn succeed(binary: &str, args: &[&str]) {
    let output = run(binary, args);
    assert!(
        output.status.success(),
        "{binary} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn rows_hold_what_the_server_computes_from_the_same_events() {
    // Simulate, build rows, train; then feed each account's signals to the
    // server's account registry as of each observation date and compare.
    let dir = TempDir::new().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    succeed(
        SIMULATE,
        &[
            "--quiet",
            "--accounts",
            "300",
            "--seed",
            "5",
            "--out",
            &p(""),
        ],
    );
    succeed(
        ROWS,
        &[
            "--quiet",
            "--input",
            &p(""),
            "--template",
            &p("template.toml"),
            "--out",
            &p("rows.csv"),
        ],
    );
    succeed(
        TRAIN,
        &[
            "--quiet",
            "--data",
            &p("rows.csv"),
            "--template",
            &p("template.toml"),
            "--out",
            &p("model.json"),
        ],
    );
    let model = Model::new(ModelArtifact::load(Path::new(&p("model.json"))).unwrap());
    let artifact = model.artifact();

    let mut events: HashMap<String, Vec<Event>> = HashMap::new();
    for record in csv::Reader::from_path(p("signals.csv")).unwrap().records() {
        let record = record.unwrap();
        events.entry(record[1].to_owned()).or_default().push(Event {
            at: chrono::DateTime::parse_from_rfc3339(&record[4])
                .unwrap()
                .timestamp_micros(),
            kind: record[2].parse::<SignalKind>().unwrap(),
            value: record[3].parse().unwrap(),
        });
    }
    let mut reader = csv::Reader::from_path(p("rows.csv")).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();

    let mut checked = 0;
    for record in reader.records() {
        let record = record.unwrap();
        let id = &record[0];
        let as_of = healthscore::dataset::parse_date(&record[1]).unwrap() * 1_000_000;
        let cell = |name: &str| &record[column(name)];
        let number =
            |name: &str| (!cell(name).is_empty()).then(|| cell(name).parse::<f64>().unwrap());

        // The server at `as_of` holds what was sent by then; a signal up to
        // five minutes ahead of its clock is accepted, so send those too.
        let sent: Vec<Event> = events
            .get(id)
            .map(|e| {
                e.iter()
                    .copied()
                    .filter(|e| e.at <= as_of + 300_000_000)
                    .collect()
            })
            .unwrap_or_default();
        let mut registry = Registry::default();
        let features = BTreeMap::from([
            (
                "plan".to_owned(),
                StoredValue::Text(cell("plan").to_owned()),
            ),
            (
                "seats".to_owned(),
                StoredValue::Number(number("seats").unwrap()),
            ),
        ]);
        let account = AccountRecord {
            account_id: id.to_owned(),
            name: String::new(),
            segment: cell("segment").to_owned(),
            region: cell("region").to_owned(),
            plan: cell("plan").to_owned(),
            annual_contract_value: number("annual_contract_value").unwrap(),
            renewal_date: None,
            features: features.clone(),
            updated_at_micros: as_of,
        };
        registry.upsert(&model, account, as_of);
        registry.add_events(&model, id, sent, as_of, lookback_days(&model), as_of);
        let state = registry.get(id).unwrap();

        // Feature by feature, from the events the server kept.
        for feature in &artifact.features {
            if let Some(signal) = &feature.signal {
                assert_eq!(
                    signal.value_at(&state.events, as_of),
                    number(&feature.name),
                    "{id} on {}: {}",
                    &record[1],
                    feature.name
                );
            }
        }
        // And the server's score equals the score of the row's values.
        let slots: Vec<Option<Value<'_>>> = artifact
            .features
            .iter()
            .map(|f| match f.name.as_str() {
                "plan" => Some(Value::Text(cell("plan"))),
                name => number(name).map(Value::Number),
            })
            .collect();
        let (mut from_row, mut served) = (Scored::default(), Scored::default());
        model.score_into(&slots, &mut from_row).unwrap();
        score_state(&model, &features, &state.events, as_of, &mut served).unwrap();
        assert_eq!(served.attributions, from_row.attributions, "{id}");
        let cached = state.score.as_ref().unwrap();
        assert_eq!(cached.churn_probability, from_row.churn_probability, "{id}");
        checked += 1;
    }
    assert!(checked > 1000, "{checked} rows checked");
}

#[test]
fn a_header_naming_a_column_twice_is_refused() {
    let dir = inputs(
        ACCOUNTS,
        SUBSCRIPTIONS,
        &SIGNALS
            .replacen("time\n", "time,value\n", 1)
            .replace('Z', "Z,1000"),
    );

    let stderr = refused(dir.path());

    assert!(
        stderr.contains("signals.csv, line 1: column \"value\" appears twice in the header"),
        "{stderr}"
    );
}

#[test]
fn account_cells_are_checked_where_they_are_written() {
    // A2's plan is blank and the template rejects a missing plan: the
    // error names accounts.csv, not the rows file training would read.
    let dir = inputs(
        &ACCOUNTS.replace("A2,Beta,apac,starter,5", "A2,Beta,apac,,5"),
        SUBSCRIPTIONS,
        SIGNALS,
    );

    let stderr = refused(dir.path());

    assert!(
        stderr.contains(
            "accounts.csv, line 3, column 4 (plan): value \"\" is missing and feature \"plan\" \
             has missing = \"reject\""
        ),
        "{stderr}"
    );
    assert!(
        !dir.path().join("rows.csv").exists(),
        "no rows were written"
    );
}

/// Stores the fixture's accounts and signals at `url` the way the server
/// stores them (subscriptions stay a CSV, which the service does not keep)
/// and checks that rows read from the store equal rows from the CSVs.
async fn rows_from_the_store_equal_rows_from_the_csvs(url: String) {
    let dir = inputs(ACCOUNTS, SUBSCRIPTIONS, SIGNALS);
    {
        let store = Store::connect(&url).await.unwrap();
        let account = |id: &str, name: &str, region: &str, plan: &str| AccountRecord {
            account_id: id.into(),
            name: name.into(),
            segment: String::new(),
            region: region.into(),
            plan: plan.into(),
            annual_contract_value: 0.0,
            renewal_date: None,
            features: BTreeMap::from([("plan".to_owned(), StoredValue::Text(plan.into()))]),
            updated_at_micros: 0,
        };
        store
            .upsert_accounts(&[
                account("A1", "Acme", "emea", "growth"),
                account("A2", "Beta", "apac", "starter"),
            ])
            .await
            .unwrap();
        let mut reader = csv::Reader::from_reader(SIGNALS.as_bytes());
        let signals: Vec<SignalRecord> = reader
            .records()
            .map(|r| {
                let r = r.unwrap();
                SignalRecord {
                    event_id: r[0].into(),
                    account_id: r[1].into(),
                    kind: r[2].into(),
                    value: r[3].parse().unwrap(),
                    occurred_at_micros: chrono::DateTime::parse_from_rfc3339(&r[4])
                        .unwrap()
                        .timestamp_micros(),
                    received_at_micros: 0,
                }
            })
            .collect();
        store.insert_signals(&signals).await.unwrap();
        store.close().await;
    }
    let from_csv = rows(dir.path());
    // Take the CSVs away: only the store and subscriptions.csv remain.
    std::fs::remove_file(dir.path().join("accounts.csv")).unwrap();
    std::fs::remove_file(dir.path().join("signals.csv")).unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    succeed(
        ROWS,
        &[
            "--quiet",
            "--input",
            &p(""),
            "--database-url",
            &url,
            "--template",
            &p("template.toml"),
            "--out",
            &p("from-store.csv"),
        ],
    );

    assert_eq!(
        std::fs::read_to_string(dir.path().join("from-store.csv")).unwrap(),
        from_csv
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_from_a_sqlite_store_equal_rows_from_the_same_csvs() {
    let dir = TempDir::new().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    rows_from_the_store_equal_rows_from_the_csvs(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_from_a_postgres_store_equal_rows_from_the_same_csvs() {
    postgres::with_database("hs_rows", rows_from_the_store_equal_rows_from_the_csvs).await;
}

/// Runs healthscore-rows on the fixture with `url` as its store, expects a
/// refusal, and returns the message.
fn refused_store(url: &str) -> String {
    let dir = inputs(ACCOUNTS, SUBSCRIPTIONS, SIGNALS);
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let output = run(
        ROWS,
        &[
            "--quiet",
            "--input",
            &p(""),
            "--database-url",
            url,
            "--template",
            &p("template.toml"),
            "--out",
            &p("rows.csv"),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(!dir.path().join("rows.csv").exists());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_missing_sqlite_store_is_refused_and_not_created() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("missing.db");
    let stderr = refused_store(&format!("sqlite://{}", db.display()));
    assert!(
        stderr.contains("cannot open the SQLite database"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "files were created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_the_schema_is_refused_and_left_empty() {
    postgres::with_database("hs_rows", |url| async move {
        let shown = url.clone();
        let stderr = tokio::task::spawn_blocking(move || refused_store(&url))
            .await
            .unwrap();
        assert!(
            stderr.contains("holds no healthscore schema"),
            "{shown}: {stderr}"
        );
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&shown)
            .await
            .unwrap();
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(tables, 0, "tables were created");
    })
    .await;
}
