//! A simulated SaaS customer base whose churn follows a known model.
//!
//! [`simulate`] writes, for a seeded population of accounts, the raw history
//! [`crate::history`] turns into training rows: `accounts.csv`,
//! `subscriptions.csv` and `signals.csv`, plus `truth.json` (the true churn
//! model and its coefficients) and `template.toml` (a training template
//! whose features are the true model's, with the `[history]` settings that
//! make the rows match the model's decisions one to one).
//!
//! # The true model
//! Every [`DECISION_INTERVAL_DAYS`] days from [`WARMUP_DAYS`] after the start,
//! each account with an active subscription decides whether to cancel. It
//! cancels with probability `σ(η)`, where
//! `η = intercept + Σ coefficient · g(x) + plan effect + seats coefficient ·
//! ln(1 + seats)`; each `x` is a [`SignalFeature`] computed with
//! [`SignalFeature::value_at`] from the account's signals strictly before the
//! decision (a missing value replaced by the documented fill), and `g` is the
//! feature's transform. [`Truth::log_odds`] is that formula. A cancelled
//! subscription ends 1 to 29 days after the decision, before the next one,
//! and is not renewed within [`RENEWAL_GAP_DAYS`]; so with rows observed on
//! the decision dates, a lead time of 0 and a horizon of one interval, each
//! row's label is exactly one draw of the true model.
//!
//! # How the data moves
//! Each account carries a latent health that reverts to its own mean, with
//! occasional sharp drops (a champion leaves). Health drives the rates of
//! every signal: logins, active users and feature use rise with it; tickets,
//! escalations, late invoices and low survey scores rise as it falls. The
//! latent health never enters the churn model directly: it moves the
//! features, and the features move churn, so engagement falls before churn.
//! Subscriptions run in 365-day terms and renew, sometimes after a lapse of
//! up to 14 days (which is not churn); a few churned accounts come back
//! 45 to 240 days later with a new subscription.
//!
//! # Size
//! About 75 signals per account-year (one weekly login count, a monthly
//! active-user count, feature use, tickets, surveys, late invoices): with
//! the default 12 months, 3.8 MB of `signals.csv` and 0.13 MB of the other
//! files per 1,000 accounts, so about 3.9 GB for 1,000,000 accounts
//! (measured at 10,000 accounts, seed 1). Accounts are simulated and
//! written one at a time, so memory does not grow with their number (under
//! 10 MB resident).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Months, NaiveDate, SecondsFormat, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    scoring::sigmoid,
    signals::{Aggregate, DAY_MICROS, Event, SignalFeature, SignalKind},
    template::{Category, Transform},
};

/// Days between two churn decisions, and the horizon of the rows' label.
pub const DECISION_INTERVAL_DAYS: i64 = 30;
/// Days of history before the first decision, so 90-day windows are full.
pub const WARMUP_DAYS: i64 = 90;
/// A subscription not renewed within this many days after it ends is churn.
pub const RENEWAL_GAP_DAYS: i64 = 30;
/// Fewest and most accounts [`simulate`] accepts.
pub const ACCOUNT_RANGE: (u64, u64) = (100, 1_000_000);
/// Fewest and most months of history [`simulate`] accepts.
pub const MONTH_RANGE: (u32, u32) = (6, 120);

const TERM_DAYS: i64 = 365;
const MAX_LAPSE_DAYS: i64 = 14;
const LAPSE_PROBABILITY: f64 = 0.05;
const WIN_BACK_PROBABILITY: f64 = 0.15;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Number of accounts, within [`ACCOUNT_RANGE`].
    pub accounts: u64,
    /// Seed; the same options give byte-identical files.
    pub seed: u64,
    /// First day of signal history.
    pub start: NaiveDate,
    /// Months of history, within [`MONTH_RANGE`].
    pub months: u32,
    /// Directory the files are written to (created if missing).
    pub out: PathBuf,
    /// Draw a progress bar on standard error (hidden anyway when it is not
    /// a terminal).
    pub progress: bool,
}

/// Why a simulation could not be written.
#[derive(Debug, Error)]
pub enum SimulateError {
    /// An option out of range.
    #[error("{0}")]
    Options(String),
    /// A file could not be written.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause; part of the message, not a separate cause.
        error: std::io::Error,
    },
}

/// One signal feature of the true model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrueSignalTerm {
    /// Feature name, in the template and the rows.
    pub name: String,
    /// The feature's definition.
    pub signal: SignalFeature,
    /// Applied to the value before it is weighted.
    pub transform: Transform,
    /// Used when the feature is missing (an empty window for `last`, a zero
    /// denominator for a ratio); `None` when it cannot be missing.
    pub fill: Option<f64>,
    /// Coefficient on the transformed value, in churn log-odds.
    pub coefficient: f64,
    /// Framework category, for the template.
    pub category: Category,
    /// What it means, for the template.
    pub description: String,
}

impl TrueSignalTerm {
    /// The term's input: the transformed feature value at `as_of`.
    pub fn input(&self, events: &[Event], as_of: i64) -> f64 {
        let raw = self
            .signal
            .value_at(events, as_of)
            .or(self.fill)
            .expect("features without a fill are never missing");
        match self.transform {
            Transform::None => raw,
            Transform::Log1p => raw.ln_1p(),
        }
    }
}

/// The true churn model and what the simulation drew from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truth {
    /// The model in words.
    pub description: String,
    /// Days between decisions.
    pub decision_interval_days: i64,
    /// First decision date.
    pub first_decision: NaiveDate,
    /// Last decision date.
    pub last_decision: NaiveDate,
    /// First day of signal history.
    pub start: NaiveDate,
    /// First day after the history (exclusive end of the data).
    pub data_end: NaiveDate,
    /// Intercept of the churn log-odds.
    pub intercept: f64,
    /// Signal features and their coefficients.
    pub signal_terms: Vec<TrueSignalTerm>,
    /// Log-odds added per plan; the first plan is the baseline (0).
    pub plan_effects: BTreeMap<String, f64>,
    /// Coefficient on `ln(1 + seats)`.
    pub log_seats_coefficient: f64,
    /// Seed of the run.
    pub seed: u64,
    /// Accounts simulated.
    pub accounts: u64,
    /// Decisions drawn (rows the matching template gives).
    pub decisions: u64,
    /// Decisions that were churn (positive rows).
    pub churns: u64,
    /// Signals written.
    pub signals: u64,
    /// Subscription periods written.
    pub subscriptions: u64,
}

impl Truth {
    /// The true model with its coefficients, for a run from `start` to
    /// `data_end` (exclusive).
    pub fn new(seed: u64, accounts: u64, start: NaiveDate, data_end: NaiveDate) -> Self {
        let first_decision = start + chrono::Days::new(WARMUP_DAYS as u64);
        let decisions = decision_days(day_number(start), day_number(data_end));
        let last_decision = first_decision
            + chrono::Days::new(
                (DECISION_INTERVAL_DAYS * (decisions.len().max(1) as i64 - 1)) as u64,
            );
        let term = |name: &str,
                    signal: SignalFeature,
                    transform,
                    fill,
                    coefficient,
                    category,
                    description: &str| TrueSignalTerm {
            name: name.to_owned(),
            signal,
            transform,
            fill,
            coefficient,
            category,
            description: description.to_owned(),
        };
        let window = |kind, aggregate, window_days| SignalFeature {
            kind,
            aggregate,
            window_days,
            ratio_to_days: None,
        };
        Truth {
            description: "Per decision (every decision_interval_days from first_decision to \
                          last_decision), an account with an active subscription churns with \
                          probability 1 / (1 + exp(-eta)), eta = intercept + sum over \
                          signal_terms of coefficient * transform(value, or fill when missing) \
                          + plan_effects[plan] + log_seats_coefficient * ln(1 + seats); values \
                          come from signals strictly before the decision date (00:00 UTC)."
                .to_owned(),
            decision_interval_days: DECISION_INTERVAL_DAYS,
            first_decision,
            last_decision,
            start,
            data_end,
            intercept: -0.8,
            signal_terms: vec![
                term(
                    "logins_28d",
                    window(SignalKind::Login, Aggregate::Sum, 28),
                    Transform::Log1p,
                    None,
                    -0.35,
                    Category::Engagement,
                    "logins over the last 28 days",
                ),
                term(
                    "login_trend",
                    SignalFeature {
                        ratio_to_days: Some(90),
                        ..window(SignalKind::Login, Aggregate::Sum, 28)
                    },
                    Transform::None,
                    Some(0.0),
                    -2.0,
                    Category::Engagement,
                    "logins over 28 days divided by logins over 90 days (0 without logins)",
                ),
                term(
                    "escalations_90d",
                    window(SignalKind::TicketEscalated, Aggregate::Count, 90),
                    Transform::None,
                    None,
                    0.6,
                    Category::Support,
                    "escalated tickets over the last 90 days",
                ),
                term(
                    "last_nps",
                    window(SignalKind::NpsResponse, Aggregate::Last, 365),
                    Transform::None,
                    Some(7.0),
                    -0.15,
                    Category::Satisfaction,
                    "latest NPS answer within a year (7 without one)",
                ),
                term(
                    "late_invoices_90d",
                    window(SignalKind::InvoicePaidLate, Aggregate::Count, 90),
                    Transform::None,
                    None,
                    0.5,
                    Category::Financial,
                    "invoices paid late over the last 90 days",
                ),
            ],
            plan_effects: PLANS
                .iter()
                .map(|p| (p.name.to_owned(), p.effect))
                .collect(),
            log_seats_coefficient: 0.25,
            seed,
            accounts,
            decisions: 0,
            churns: 0,
            signals: 0,
            subscriptions: 0,
        }
    }

    /// The true churn log-odds of an account with `plan` and `seats` at
    /// `as_of` (microseconds), from its `events` sorted by time.
    ///
    /// # Panics
    /// When `plan` is not one of [`Truth::plan_effects`].
    pub fn log_odds(&self, events: &[Event], as_of: i64, plan: &str, seats: u32) -> f64 {
        let signals: f64 = self
            .signal_terms
            .iter()
            .map(|t| t.coefficient * t.input(events, as_of))
            .sum();
        self.intercept
            + signals
            + self.plan_effects[plan]
            + self.log_seats_coefficient * f64::from(seats).ln_1p()
    }

    /// A training template whose features are the true model's, with the
    /// `[history]` settings under which `healthscore-rows` gives one row per
    /// decision, labelled with its outcome.
    pub fn template(&self) -> String {
        let mut t = String::new();
        t.push_str(&format!(
            "# Written by healthscore-simulate (seed {}): the true churn model's features.\n\
             # Build rows with healthscore-rows, then train with healthscore-train.\n\
             name = \"simulated-churn\"\n\
             description = \"Churn within {} days on simulated SaaS accounts\"\n\
             id_column = \"account_id\"\n\
             date_column = \"observed_at\"\n\
             outcome = {{ column = \"churned\", positive = \"yes\", negative = \"no\" }}\n\
             ignore = [{}]\n\n\
             [history]\n\
             interval_days = {}\n\
             first_observation = \"{}\"\n\
             last_observation = \"{}\"\n\
             lead_days = 0\n\
             horizon_days = {}\n\
             renewal_gap_days = {}\n\
             data_end = \"{}\"\n\
             extra_columns = [{}]\n",
            self.seed,
            self.decision_interval_days,
            quoted_list(EXTRA_COLUMNS),
            self.decision_interval_days,
            self.first_decision,
            self.last_decision,
            self.decision_interval_days,
            RENEWAL_GAP_DAYS,
            self.data_end,
            quoted_list(EXTRA_COLUMNS),
        ));
        for term in &self.signal_terms {
            let s = &term.signal;
            let ratio = s
                .ratio_to_days
                .map_or_else(String::new, |d| format!(", ratio_to_days = {d}"));
            let missing = term.fill.map_or_else(
                || "\"reject\"".to_owned(),
                |v| format!("{{ constant = {v:?} }}"),
            );
            let transform = match term.transform {
                Transform::None => "none",
                Transform::Log1p => "log1p",
            };
            t.push_str(&format!(
                "\n[[feature]]\nname = \"{}\"\nkind = \"numeric\"\ncategory = \"{}\"\n\
                 transform = \"{transform}\"\nmissing = {missing}\ndescription = \"{}\"\n\
                 signal = {{ kind = \"{}\", aggregate = \"{}\", window_days = {}{ratio} }}\n",
                term.name,
                term.category,
                term.description,
                s.kind,
                aggregate_name(s.aggregate),
                s.window_days,
            ));
        }
        t.push_str(
            "\n[[feature]]\nname = \"plan\"\nkind = \"categorical\"\ncategory = \"financial\"\n\
             description = \"subscription plan\"\n\
             \n[[feature]]\nname = \"seats\"\nkind = \"numeric\"\ncategory = \"profile\"\n\
             transform = \"log1p\"\ndescription = \"licensed seats\"\n",
        );
        t
    }
}

/// Profile columns of `accounts.csv` the template carries into the rows
/// without using them as features.
pub const EXTRA_COLUMNS: &[&str] = &["segment", "region", "annual_contract_value"];

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn aggregate_name(aggregate: Aggregate) -> &'static str {
    match aggregate {
        Aggregate::Count => "count",
        Aggregate::Sum => "sum",
        Aggregate::Mean => "mean",
        Aggregate::Last => "last",
    }
}

/// What a run wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The truth, with the counts filled in.
    pub truth: Truth,
    /// Bytes written per file name.
    pub bytes: Vec<(String, u64)>,
}

struct Plan {
    name: &'static str,
    effect: f64,
    price_per_seat_month: f64,
}

const PLANS: [Plan; 3] = [
    Plan {
        name: "starter",
        effect: 0.0,
        price_per_seat_month: 15.0,
    },
    Plan {
        name: "growth",
        effect: -0.3,
        price_per_seat_month: 35.0,
    },
    Plan {
        name: "enterprise",
        effect: -0.6,
        price_per_seat_month: 60.0,
    },
];

struct Segment {
    name: &'static str,
    seats: (f64, f64),
    /// Chances of starter, growth, enterprise.
    plan_weights: [f64; 3],
    share: f64,
}

const SEGMENTS: [Segment; 3] = [
    Segment {
        name: "smb",
        seats: (3.0, 30.0),
        plan_weights: [0.6, 0.35, 0.05],
        share: 0.6,
    },
    Segment {
        name: "mid_market",
        seats: (25.0, 300.0),
        plan_weights: [0.2, 0.55, 0.25],
        share: 0.3,
    },
    Segment {
        name: "enterprise",
        seats: (250.0, 5000.0),
        plan_weights: [0.02, 0.38, 0.6],
        share: 0.1,
    },
];

const REGIONS: [(&str, f64); 4] = [
    ("north_america", 0.45),
    ("emea", 0.3),
    ("apac", 0.17),
    ("latam", 0.08),
];

const NAME_STARTS: [&str; 16] = [
    "Nor", "Vel", "Quan", "Bri", "Alt", "Zen", "Cor", "Lum", "Ost", "Pax", "Ter", "Hal", "Mer",
    "Syn", "Kai", "Dra",
];
const NAME_ENDS: [&str; 12] = [
    "vex", "ora", "tix", "ian", "ova", "ar", "ent", "ix", "ula", "on", "eda", "is",
];
const NAME_SUFFIXES: [&str; 8] = [
    "Labs",
    "Systems",
    "Health",
    "Logistics",
    "Analytics",
    "Group",
    "Software",
    "Partners",
];

#[derive(Serialize)]
struct AccountRow<'a> {
    account_id: &'a str,
    name: &'a str,
    segment: &'a str,
    region: &'a str,
    plan: &'a str,
    seats: u32,
    annual_contract_value: f64,
    signup_date: NaiveDate,
}

#[derive(Serialize)]
struct SubscriptionRow<'a> {
    account_id: &'a str,
    start: NaiveDate,
    end: Option<NaiveDate>,
}

#[derive(Serialize)]
struct SignalRow<'a> {
    event_id: &'a str,
    account_id: &'a str,
    kind: &'a str,
    value: &'a str,
    time: &'a str,
}

/// Writes the simulated data set into `options.out`.
///
/// # Errors
/// [`SimulateError::Options`] for options out of range,
/// [`SimulateError::Write`] naming the file that could not be written.
pub fn simulate(options: &SimulateOptions) -> Result<Summary, SimulateError> {
    let (low, high) = ACCOUNT_RANGE;
    if !(low..=high).contains(&options.accounts) {
        return Err(SimulateError::Options(format!(
            "--accounts must be {low} to {high}, got {}",
            options.accounts
        )));
    }
    let (low, high) = MONTH_RANGE;
    if !(low..=high).contains(&options.months) {
        return Err(SimulateError::Options(format!(
            "--months must be {low} to {high}, got {}",
            options.months
        )));
    }
    let data_end = options
        .start
        .checked_add_months(Months::new(options.months))
        .ok_or_else(|| SimulateError::Options("the history ends past year 262143".into()))?;
    let mut truth = Truth::new(options.seed, options.accounts, options.start, data_end);

    let dir = &options.out;
    std::fs::create_dir_all(dir).map_err(|error| SimulateError::Write {
        path: dir.clone(),
        error,
    })?;
    let mut files = Files::create(dir, day_number(data_end))?;
    let bar = progress_bar(options.progress, options.accounts);
    let mut scratch = Scratch::default();
    for index in 0..options.accounts {
        let account = simulate_account(&truth, index, &mut scratch);
        truth.decisions += account.decisions;
        truth.churns += account.churns;
        files.write(&account, &scratch)?;
        if index % 1024 == 0 {
            bar.set_position(index);
        }
    }
    bar.finish_and_clear();
    truth.signals = files.next_event_id;
    truth.subscriptions = files.subscriptions;
    files.finish()?;

    let json = serde_json::to_string_pretty(&truth).expect("the truth serialises") + "\n";
    write_file(&dir.join("truth.json"), json.as_bytes())?;
    write_file(&dir.join("template.toml"), truth.template().as_bytes())?;
    let bytes = [
        "accounts.csv",
        "subscriptions.csv",
        "signals.csv",
        "truth.json",
        "template.toml",
    ]
    .iter()
    .map(|name| {
        let size = std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
        ((*name).to_owned(), size)
    })
    .collect();
    Ok(Summary { truth, bytes })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SimulateError> {
    std::fs::write(path, bytes).map_err(|error| SimulateError::Write {
        path: path.to_owned(),
        error,
    })
}

fn progress_bar(visible: bool, accounts: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(accounts), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("accounts [{bar:30}] {pos}/{len} ({eta})")
        .expect("the progress template is valid");
    bar.set_style(style);
    bar
}

/// Days since 1970-01-01.
fn day_number(date: NaiveDate) -> i64 {
    (date - NaiveDate::default()).num_days()
}

fn date_of(day: i64) -> NaiveDate {
    NaiveDate::default() + chrono::Days::new(day as u64)
}

/// Decision days from `start + WARMUP_DAYS` while the decision's label
/// window and the renewal gap after it end by `end`.
fn decision_days(start: i64, end: i64) -> Vec<i64> {
    (0..)
        .map(|k| start + WARMUP_DAYS + k * DECISION_INTERVAL_DAYS)
        .take_while(|d| d + DECISION_INTERVAL_DAYS + RENEWAL_GAP_DAYS <= end)
        .collect()
}

/// Buffers reused from one account to the next.
#[derive(Default)]
struct Scratch {
    events: Vec<Event>,
    periods: Vec<(i64, i64)>,
}

struct SimulatedAccount {
    id: String,
    name: String,
    segment: &'static str,
    region: &'static str,
    plan: &'static str,
    seats: u32,
    annual_contract_value: f64,
    signup: i64,
    decisions: u64,
    churns: u64,
}

fn pick<T>(rng: &mut ChaCha8Rng, items: &[T], weight: impl Fn(&T) -> f64) -> usize {
    let total: f64 = items.iter().map(&weight).sum();
    let mut u = rng.random::<f64>() * total;
    for (i, item) in items.iter().enumerate() {
        u -= weight(item);
        if u < 0.0 {
            return i;
        }
    }
    items.len() - 1
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller; 1 - u keeps the logarithm finite.
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 30.0 {
        // The normal approximation is close enough for signal volumes,
        // which only need to be plausible.
        return (mean + mean.sqrt() * normal(rng)).round().max(0.0) as u64;
    }
    let limit = (-mean).exp();
    let mut product = rng.random::<f64>();
    let mut n = 0;
    while product > limit {
        product *= rng.random::<f64>();
        n += 1;
    }
    n
}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// Simulates account `index`: its profile, subscription periods and
/// signals (left in `scratch`, sorted by time), deciding churn with the
/// true model.
fn simulate_account(truth: &Truth, index: u64, scratch: &mut Scratch) -> SimulatedAccount {
    let mut rng = ChaCha8Rng::seed_from_u64(truth.seed);
    rng.set_stream(index);
    let start = day_number(truth.start);
    let end = day_number(truth.data_end);

    let segment = &SEGMENTS[pick(&mut rng, &SEGMENTS, |s| s.share)];
    let plan = &PLANS[pick(&mut rng, &segment.plan_weights, |w| *w)];
    let region = REGIONS[pick(&mut rng, &REGIONS, |r| r.1)].0;
    let (low, high) = segment.seats;
    let seats = (low * (high / low).powf(rng.random::<f64>())).round() as u32;
    let discount = 1.0 - 0.25 * rng.random::<f64>();
    let acv = (f64::from(seats) * plan.price_per_seat_month * 12.0 * discount).round();
    let name = format!(
        "{}{} {}",
        NAME_STARTS[rng.random_range(0..NAME_STARTS.len())],
        NAME_ENDS[rng.random_range(0..NAME_ENDS.len())],
        NAME_SUFFIXES[rng.random_range(0..NAME_SUFFIXES.len())],
    );
    let signup = if chance(&mut rng, 0.6) {
        start - rng.random_range(1..=3 * TERM_DAYS)
    } else {
        start + rng.random_range(0..(end - start - DECISION_INTERVAL_DAYS))
    };
    let mut account = SimulatedAccount {
        id: format!("A{:07}", index + 1),
        name,
        segment: segment.name,
        region,
        plan: plan.name,
        seats,
        annual_contract_value: acv,
        signup,
        decisions: 0,
        churns: 0,
    };

    let events = &mut scratch.events;
    let periods = &mut scratch.periods;
    events.clear();
    periods.clear();
    // Terms before the history renew back to back.
    let mut period_start = signup;
    while period_start + TERM_DAYS <= start {
        periods.push((period_start, period_start + TERM_DAYS));
        period_start += TERM_DAYS;
    }
    periods.push((period_start, period_start + TERM_DAYS));

    let mean_health = 0.3 + 0.8 * normal(&mut rng);
    let mut health = mean_health + 0.5 * normal(&mut rng);
    // Days without signals: after a cancellation, until a win-back (or the
    // end). The simulation stops at `end` anyway.
    let mut silent: Option<(i64, i64)> = None;
    let decisions = decision_days(start, end);
    let mut next_decision = 0;
    let first_week = signup.max(start);
    let seats_f = f64::from(seats);
    let mut week = 0_i64;
    loop {
        let day = first_week + 7 * week;
        if day >= end {
            break;
        }
        if silent.is_none_or(|(from, until)| day + 7 <= from || day >= until) {
            weekly_signals(&mut rng, events, day, week, health, seats_f);
        }
        health += 0.08 * (mean_health - health) + 0.15 * normal(&mut rng);
        if chance(&mut rng, 0.006) {
            health -= 1.0 + 1.5 * rng.random::<f64>();
        }
        // Renew every term that ended by the end of this week.
        while let Some(&(_, period_end)) = periods.last() {
            if period_end > day + 7 || silent.is_some_and(|(from, _)| from == period_end) {
                break;
            }
            let lapse = if chance(&mut rng, LAPSE_PROBABILITY) {
                rng.random_range(1..=MAX_LAPSE_DAYS)
            } else {
                0
            };
            periods.push((period_end + lapse, period_end + lapse + TERM_DAYS));
        }
        while next_decision < decisions.len() && decisions[next_decision] < day + 7 {
            let decision = decisions[next_decision];
            next_decision += 1;
            let active = periods.iter().any(|&(s, e)| s <= decision && decision < e);
            if !active {
                continue;
            }
            events.sort_by_key(|e| e.at);
            let eta = truth.log_odds(events, decision * DAY_MICROS, plan.name, seats);
            account.decisions += 1;
            if !chance(&mut rng, sigmoid(eta)) {
                continue;
            }
            account.churns += 1;
            let current = periods
                .iter()
                .position(|&(s, e)| s <= decision && decision < e)
                .expect("the account is active");
            // Renewals already drawn for terms ending after the decision
            // never happen.
            periods.truncate(current + 1);
            let churn_day =
                (decision + rng.random_range(1..DECISION_INTERVAL_DAYS)).min(periods[current].1);
            periods[current].1 = churn_day;
            let back = if chance(&mut rng, WIN_BACK_PROBABILITY) {
                churn_day + rng.random_range(45..=240)
            } else {
                i64::MAX
            };
            silent = Some((churn_day, back));
            events.retain(|e| e.at < churn_day * DAY_MICROS);
            if back < end {
                periods.push((back, back + TERM_DAYS));
                health = mean_health;
            }
        }
        week += 1;
    }
    events.retain(|e| e.at < end * DAY_MICROS);
    events.sort_by_key(|e| e.at);
    periods.retain(|&(s, _)| s < end);
    account
}

/// Appends one week's signals, starting at `day`, for an account of
/// `seats` whose latent health is `health`.
fn weekly_signals(
    rng: &mut ChaCha8Rng,
    events: &mut Vec<Event>,
    day: i64,
    week: i64,
    health: f64,
    seats: f64,
) {
    let week_start = day * DAY_MICROS;
    let at = |rng: &mut ChaCha8Rng| week_start + rng.random_range(0..7 * 86_400) * 1_000_000;
    let mut push = |at: i64, kind, value: f64| events.push(Event { at, kind, value });

    let logins = poisson(rng, seats * 1.5 * (0.5 * health).exp());
    if logins > 0 {
        push(at(rng), SignalKind::Login, logins as f64);
    }
    if week % 4 == 0 {
        let share = sigmoid(0.5 + health);
        push(
            at(rng),
            SignalKind::ActiveUsers,
            (seats * share).round().max(1.0),
        );
    }
    for _ in 0..poisson(rng, 0.3 * (0.6 * health).exp()) {
        push(
            at(rng),
            SignalKind::FeatureUsed,
            1.0 + poisson(rng, 2.0) as f64,
        );
    }
    let ticket_rate = 0.04 * (1.0 + seats.ln_1p() / 2.0) * (-0.4 * health).exp();
    for _ in 0..poisson(rng, ticket_rate) {
        let opened = at(rng);
        push(opened, SignalKind::TicketOpened, 1.0);
        let hours = 1 + poisson(rng, 20.0 * (-0.3 * health).exp());
        let hours_micros = hours as i64 * 3_600_000_000;
        if chance(rng, sigmoid(-1.5 - 0.8 * health)) {
            push(opened + hours_micros / 2, SignalKind::TicketEscalated, 1.0);
        }
        let resolved = opened + hours_micros;
        push(resolved, SignalKind::TicketResolved, hours as f64);
        if chance(rng, 0.35) {
            let csat = (3.5 + 0.8 * health + 0.8 * normal(rng))
                .round()
                .clamp(1.0, 5.0);
            push(resolved + 3_600_000_000, SignalKind::CsatResponse, csat);
        }
    }
    if week % 13 == 6 && chance(rng, 0.45) {
        let nps = (7.0 + 1.5 * health + 1.5 * normal(rng))
            .round()
            .clamp(0.0, 10.0);
        push(at(rng), SignalKind::NpsResponse, nps);
    }
    if week % 4 == 2 && chance(rng, sigmoid(-2.8 - 0.9 * health)) {
        push(
            at(rng),
            SignalKind::InvoicePaidLate,
            1.0 + poisson(rng, 10.0) as f64,
        );
    }
}

/// The three CSV writers.
struct Files {
    dir: PathBuf,
    accounts: csv::Writer<BufWriter<File>>,
    subscriptions_file: csv::Writer<BufWriter<File>>,
    signals: csv::Writer<BufWriter<File>>,
    next_event_id: u64,
    subscriptions: u64,
    end: i64,
    id: String,
    value: String,
    time: String,
}

impl Files {
    fn create(dir: &Path, end: i64) -> Result<Self, SimulateError> {
        let open = |name: &str| {
            let path = dir.join(name);
            File::create(&path)
                .map(|f| csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, f)))
                .map_err(|error| SimulateError::Write { path, error })
        };
        Ok(Files {
            dir: dir.to_owned(),
            accounts: open("accounts.csv")?,
            subscriptions_file: open("subscriptions.csv")?,
            signals: open("signals.csv")?,
            next_event_id: 0,
            subscriptions: 0,
            end,
            id: String::new(),
            value: String::new(),
            time: String::new(),
        })
    }

    fn error(&self, name: &str, error: csv::Error) -> SimulateError {
        let path = self.dir.join(name);
        let error = match error.into_kind() {
            csv::ErrorKind::Io(error) => error,
            other => std::io::Error::other(format!("{other:?}")),
        };
        SimulateError::Write { path, error }
    }

    fn write(
        &mut self,
        account: &SimulatedAccount,
        scratch: &Scratch,
    ) -> Result<(), SimulateError> {
        let id = account.id.as_str();
        self.accounts
            .serialize(AccountRow {
                account_id: id,
                name: &account.name,
                segment: account.segment,
                region: account.region,
                plan: account.plan,
                seats: account.seats,
                annual_contract_value: account.annual_contract_value,
                signup_date: date_of(account.signup),
            })
            .map_err(|e| self.error("accounts.csv", e))?;
        for &(start, end) in &scratch.periods {
            self.subscriptions += 1;
            self.subscriptions_file
                .serialize(SubscriptionRow {
                    account_id: id,
                    start: date_of(start),
                    // A term still running when the data ends has no end yet.
                    end: (end < self.end).then(|| date_of(end)),
                })
                .map_err(|e| self.error("subscriptions.csv", e))?;
        }
        for event in &scratch.events {
            self.next_event_id += 1;
            self.id.clear();
            write!(self.id, "e{}", self.next_event_id).expect("writing to a String");
            self.value.clear();
            // Display writes 12 rather than serde's 12.0; both parse back to
            // the same number.
            write!(self.value, "{}", event.value).expect("writing to a String");
            self.time.clear();
            let time = DateTime::<Utc>::from_timestamp_micros(event.at)
                .expect("simulated times are in range");
            self.time
                .push_str(&time.to_rfc3339_opts(SecondsFormat::Secs, true));
            self.signals
                .serialize(SignalRow {
                    event_id: &self.id,
                    account_id: id,
                    kind: event.kind.as_str(),
                    value: &self.value,
                    time: &self.time,
                })
                .map_err(|e| self.error("signals.csv", e))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), SimulateError> {
        for (name, writer) in [
            ("accounts.csv", &mut self.accounts),
            ("subscriptions.csv", &mut self.subscriptions_file),
            ("signals.csv", &mut self.signals),
        ] {
            writer.flush().map_err(|error| SimulateError::Write {
                path: self.dir.join(name),
                error,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{history::HistorySettings, template::Template};

    fn truth() -> Truth {
        let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        Truth::new(
            1,
            100,
            start,
            start.checked_add_months(Months::new(12)).unwrap(),
        )
    }

    #[test]
    fn the_written_template_declares_the_true_features_and_decision_dates() {
        let truth = truth();
        let text = truth.template();

        let template = Template::from_toml(&text).unwrap();
        let settings = HistorySettings::from_toml(&text).unwrap();

        for term in &truth.signal_terms {
            let feature = template
                .features
                .iter()
                .find(|f| f.name == term.name)
                .unwrap();
            assert_eq!(feature.signal, Some(term.signal), "{}", term.name);
            assert_eq!(feature.transform, term.transform, "{}", term.name);
        }
        let names: Vec<&str> = template.features.iter().map(|f| f.name.as_str()).collect();
        assert!(names.ends_with(&["plan", "seats"]), "{names:?}");
        assert_eq!(settings.first_observation, Some(truth.first_decision));
        assert_eq!(settings.last_observation, Some(truth.last_decision));
        assert_eq!(i64::from(settings.horizon_days), DECISION_INTERVAL_DAYS);
        assert_eq!(i64::from(settings.interval_days), DECISION_INTERVAL_DAYS);
        assert_eq!(settings.lead_days, 0);
    }

    #[test]
    fn decisions_leave_room_for_the_label_and_the_renewal_gap() {
        let truth = truth();

        // 2024-03-31 is 90 days after the start; the last decision's window
        // and renewal gap end by 2025-01-01.
        assert_eq!(truth.first_decision.to_string(), "2024-03-31");
        let end = day_number(truth.last_decision) + DECISION_INTERVAL_DAYS + RENEWAL_GAP_DAYS;
        assert!(end <= day_number(truth.data_end));
        assert!(end + DECISION_INTERVAL_DAYS > day_number(truth.data_end));
    }

    #[test]
    fn log_odds_follow_the_documented_formula() {
        let truth = truth();
        let as_of = 20_000 * DAY_MICROS;
        let login = |days_before: i64, value| Event {
            at: as_of - days_before * DAY_MICROS,
            kind: SignalKind::Login,
            value,
        };
        let events = [login(80, 10.0), login(40, 20.0), login(10, 30.0)];

        let eta = truth.log_odds(&events, as_of, "growth", 9);

        // logins_28d = 30, trend = 30 / 60, no escalations, NPS filled
        // with 7, no late invoices.
        let expected = -0.8 - 0.35 * 31f64.ln() - 2.0 * 0.5 - 0.15 * 7.0 - 0.3 + 0.25 * 10f64.ln();
        assert!((eta - expected).abs() < 1e-12, "{eta} vs {expected}");
    }
}
