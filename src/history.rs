//! Point-in-time training rows from raw account history.
//!
//! [`build_rows`] reads `accounts.csv`, `subscriptions.csv` and
//! `signals.csv` (the layout `healthscore-simulate` writes) and writes one
//! row per account and observation date on which the account has an active
//! subscription. Each row holds the template's features as they stood on
//! that date: signal features computed with [`SignalFeature::value_at`]
//! from the account's signals strictly before 00:00 UTC of the date (the
//! function the server scores with), other features copied from
//! `accounts.csv`. The label says whether the account churned in
//! `[date + lead, date + lead + horizon)`, where churn is a subscription
//! period that ended and was not followed by another one starting within
//! the renewal gap. The output is a CSV `healthscore-train` reads with the
//! same template.
//!
//! The settings live in the template's `[history]` table
//! ([`HistorySettings`]). This module owns that table; the trainer ignores
//! it.
//!
//! # Input files
//! - `accounts.csv`: `account_id` (unique) plus a column per non-signal
//!   template feature and per `extra_columns` entry; other columns are
//!   ignored.
//! - `subscriptions.csv`: `account_id`, `start`, `end` as `YYYY-MM-DD`;
//!   `end` is the first day without service, empty while the period runs.
//!   Periods of one account must not overlap.
//! - `signals.csv`: `event_id`, `account_id`, `kind`, `value`, `time` (RFC
//!   3339); kinds and values as the server accepts them.
//!
//! Every bad cell is reported with its file, line and column.
//!
//! # Memory
//! All signals are held in memory, grouped by account: about 24 bytes per
//! signal plus the account ids, and while reading, each event id once to
//! find repeats (about 40 bytes more per signal: 4 GB in all for 60
//! million signals). Accounts could instead be streamed when `signals.csv`
//! is grouped by account, as the simulator writes it; the sizes trained so
//! far have not needed it.
//! A repeated `event_id` counts once, as the server stores it once: the
//! first line with the id is kept and the repeats are counted in the
//! summary.

use std::{
    collections::HashMap,
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
};

use chrono::{DateTime, NaiveDate};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Deserializer, de::Error as _};
use thiserror::Error;

use crate::{
    dataset::convert_csv_error,
    error::{DataError, TemplateError},
    signals::{DAY_MICROS, EARLIEST_SIGNAL_MICROS, Event, SignalFeature, SignalKind},
    store::{Store, StoreError, StoredValue},
    template::{FeatureSpec, Template},
};

/// The template's `[history]` table: how rows are sampled and labelled.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    /// Days between observation dates. Default 30.
    #[serde(default = "default_interval_days")]
    pub interval_days: u32,
    /// First observation date. Default: the longest feature window after
    /// the day of the earliest signal, so every window is fully inside the
    /// data.
    #[serde(default, deserialize_with = "optional_day")]
    pub first_observation: Option<NaiveDate>,
    /// Last observation date (taken when it falls on the interval). Default:
    /// the latest date whose label window and renewal gap end by
    /// `data_end`.
    #[serde(default, deserialize_with = "optional_day")]
    pub last_observation: Option<NaiveDate>,
    /// Days between the observation and the start of the label window.
    /// Default 0.
    #[serde(default)]
    pub lead_days: u32,
    /// Length of the label window in days. Default 90.
    #[serde(default = "default_horizon_days")]
    pub horizon_days: u32,
    /// A period ending without another starting within this many days is
    /// churn. Default 30.
    #[serde(default = "default_renewal_gap_days")]
    pub renewal_gap_days: u32,
    /// First day after the data (when it was extracted). Default: the day
    /// after the latest signal, subscription start or end.
    #[serde(default, deserialize_with = "optional_day")]
    pub data_end: Option<NaiveDate>,
    /// `accounts.csv` columns copied into the rows without being features;
    /// each must be listed under the template's `ignore`. Default none.
    #[serde(default)]
    pub extra_columns: Vec<String>,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            interval_days: default_interval_days(),
            first_observation: None,
            last_observation: None,
            lead_days: 0,
            horizon_days: default_horizon_days(),
            renewal_gap_days: default_renewal_gap_days(),
            data_end: None,
            extra_columns: Vec::new(),
        }
    }
}

fn default_interval_days() -> u32 {
    30
}
fn default_horizon_days() -> u32 {
    90
}
fn default_renewal_gap_days() -> u32 {
    30
}

fn optional_day<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
    let text = match toml::Value::deserialize(d)? {
        toml::Value::String(s) => s,
        toml::Value::Datetime(t) => t.to_string(),
        other => {
            return Err(D::Error::custom(format!(
                "expected a date such as \"2024-01-31\", got {other}"
            )));
        }
    };
    NaiveDate::parse_from_str(&text, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{text:?} is not a date (expected YYYY-MM-DD)")))
}

impl HistorySettings {
    /// Reads the `[history]` table of a template's TOML text; defaults when
    /// there is none.
    ///
    /// # Errors
    /// [`TemplateError::Parse`] for an unknown key or a bad value, with its
    /// line and column.
    pub fn from_toml(text: &str) -> Result<Self, TemplateError> {
        #[derive(Deserialize)]
        struct WithHistory {
            #[serde(default)]
            history: Option<HistorySettings>,
        }
        let parsed: WithHistory = toml::from_str(text).map_err(|e| TemplateError::Parse {
            path: None,
            message: e.to_string(),
        })?;
        let settings = parsed.history.unwrap_or_default();
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), TemplateError> {
        let invalid = |message: String| {
            Err(TemplateError::Invalid {
                path: None,
                message,
            })
        };
        if self.interval_days == 0 {
            return invalid("`history.interval_days` must be at least 1".into());
        }
        if self.horizon_days == 0 {
            return invalid("`history.horizon_days` must be at least 1".into());
        }
        if let (Some(first), Some(last)) = (self.first_observation, self.last_observation) {
            if first > last {
                return invalid(format!(
                    "`history.first_observation` ({first}) is after \
                     `history.last_observation` ({last})"
                ));
            }
        }
        Ok(())
    }
}

/// Why rows could not be built.
#[derive(Debug, Error)]
pub enum HistoryError {
    /// The template or its `[history]` table is unusable.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// An input file is unreadable or holds a bad value.
    #[error(transparent)]
    Data(#[from] DataError),
    /// An input file lacks a column the rows need.
    #[error("{}, line 1: the header has no column {column:?}{why}", path.display())]
    MissingColumn {
        /// The input file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Why it is needed, when not obvious; starts with "; ".
        why: String,
    },
    /// The service's store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The rows could not be written.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// The cause; part of the message, not a separate cause.
        error: std::io::Error,
    },
}

/// What to build rows from.
#[derive(Debug, Clone)]
pub struct RowsOptions {
    /// Directory holding `accounts.csv`, `subscriptions.csv` and
    /// `signals.csv` (only `subscriptions.csv` with `database_url`).
    pub input: PathBuf,
    /// Read accounts and signals from the service's own store (an
    /// `sqlite://` or `postgres://` URL) instead of `accounts.csv` and
    /// `signals.csv`; subscriptions, which the service does not keep, still
    /// come from `subscriptions.csv`.
    pub database_url: Option<String>,
    /// The training template, with its `[history]` table.
    pub template: PathBuf,
    /// Where the rows CSV is written.
    pub out: PathBuf,
    /// Draw progress bars on standard error (hidden anyway when it is not a
    /// terminal).
    pub progress: bool,
}

/// What [`build_rows`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsSummary {
    /// Rows written.
    pub rows: u64,
    /// Rows labelled churned.
    pub positives: u64,
    /// Accounts read.
    pub accounts: u64,
    /// Accounts with at least one row.
    pub accounts_with_rows: u64,
    /// Signals read (each event id once).
    pub signals: u64,
    /// Lines repeating an event id already read, left out.
    pub duplicate_signals: u64,
    /// The observation dates used.
    pub observation_dates: Vec<NaiveDate>,
}

/// One account as read.
#[derive(Debug, Default)]
struct Account {
    id: String,
    /// Cells copied into every row: non-signal features, then extras.
    cells: Vec<String>,
    /// Subscription periods: start day, end day (exclusive, `None` while
    /// running), line in `subscriptions.csv`.
    periods: Vec<(i64, Option<i64>, u64)>,
    events: Vec<Event>,
}

/// Builds the rows as [`RowsOptions`] says.
///
/// # Errors
/// [`HistoryError`] naming the template setting, or the file, line and
/// column of the first bad input.
pub fn build_rows(options: &RowsOptions) -> Result<RowsSummary, HistoryError> {
    let (template, settings) = read_template(&options.template)?;
    let plan = Plan::new(&template, &settings).map_err(|e| e.with_path(&options.template))?;

    let files = |name: &str| options.input.join(name);
    let mut bounds = Bounds::default();
    let (mut accounts, index, stored) = match &options.database_url {
        Some(url) => {
            let ((accounts, index), signals) = read_store(url, &plan, &template, &mut bounds)?;
            (accounts, index, Some(signals))
        }
        None => {
            let (accounts, index) = read_accounts(&files("accounts.csv"), &plan, &template)?;
            (accounts, index, None)
        }
    };
    read_subscriptions(
        &files("subscriptions.csv"),
        &mut accounts,
        &index,
        &mut bounds,
    )?;
    let (signals, duplicate_signals) = match stored {
        // The store keeps each event id once already.
        Some(signals) => (signals, 0),
        None => read_signals(
            &files("signals.csv"),
            &mut accounts,
            &index,
            &mut bounds,
            options.progress,
        )?,
    };
    let dates =
        observation_dates(&settings, &plan, &bounds).map_err(|message| TemplateError::Invalid {
            path: Some(options.template.clone()),
            message,
        })?;

    let mut summary = write_rows(&options.out, &template, &settings, &plan, &accounts, &dates)?;
    summary.accounts = accounts.len() as u64;
    summary.signals = signals;
    summary.duplicate_signals = duplicate_signals;
    summary.observation_dates = dates.iter().map(|&d| date_of(d)).collect();
    Ok(summary)
}

/// Reads the template and its `[history]` table.
///
/// # Errors
/// [`TemplateError`] naming the file, and for syntax and unknown keys the
/// line and column.
pub fn read_template(path: &Path) -> Result<(Template, HistorySettings), TemplateError> {
    let template = Template::from_path(path)?;
    let text = std::fs::read_to_string(path).map_err(|error| TemplateError::Io {
        path: path.to_owned(),
        error,
    })?;
    let settings = HistorySettings::from_toml(&text).map_err(|e| e.with_path(path))?;
    Ok((template, settings))
}

/// Which template features come from signals and which from
/// `accounts.csv`, and which columns are carried.
struct Plan {
    date_column: String,
    /// Per template feature: the signal definition, or the index of its
    /// cell in [`Account::cells`].
    features: Vec<Source>,
    /// `accounts.csv` columns to copy, in cell order.
    carried: Vec<String>,
    longest_window: u32,
}

enum Source {
    Signal(SignalFeature),
    Cell(usize),
}

impl Plan {
    fn new(template: &Template, settings: &HistorySettings) -> Result<Self, TemplateError> {
        let invalid = |message: String| TemplateError::Invalid {
            path: None,
            message,
        };
        let date_column = template.date_column.clone().ok_or_else(|| {
            invalid(
                "rows need a date: set `date_column` (for example \"observed_at\"), the column \
                 the observation dates are written to"
                    .into(),
            )
        })?;
        for extra in &settings.extra_columns {
            if !template.ignore.contains(extra) {
                return Err(invalid(format!(
                    "`history.extra_columns` names {extra:?}, which `ignore` does not list; \
                     the trainer would reject the column"
                )));
            }
        }
        if let Some(stray) = template
            .ignore
            .iter()
            .find(|i| !settings.extra_columns.contains(i))
        {
            return Err(invalid(format!(
                "`ignore` lists {stray:?}, which the rows do not have; list it in \
                 `history.extra_columns` to copy it from accounts.csv, or remove it"
            )));
        }
        let mut carried = Vec::new();
        let mut features = Vec::new();
        for feature in &template.features {
            features.push(match feature.signal {
                Some(signal) => Source::Signal(signal),
                None => {
                    carried.push(feature.name.clone());
                    Source::Cell(carried.len() - 1)
                }
            });
        }
        carried.extend(settings.extra_columns.iter().cloned());
        let longest_window = template
            .features
            .iter()
            .filter_map(|f| f.signal.map(|s| s.lookback_days()))
            .max()
            .unwrap_or(0);
        Ok(Plan {
            date_column,
            features,
            carried,
            longest_window,
        })
    }
}

/// The earliest and latest days the input mentions.
#[derive(Debug, Default)]
struct Bounds {
    first_signal_day: Option<i64>,
    first_day: Option<i64>,
    last_day: Option<i64>,
}

impl Bounds {
    fn see(&mut self, day: i64) {
        self.first_day = Some(self.first_day.map_or(day, |d| d.min(day)));
        self.last_day = Some(self.last_day.map_or(day, |d| d.max(day)));
    }
}

/// Days since 1970-01-01.
fn day_number(date: NaiveDate) -> i64 {
    (date - NaiveDate::default()).num_days()
}

fn date_of(day: i64) -> NaiveDate {
    NaiveDate::default() + chrono::TimeDelta::days(day)
}

/// A CSV file being read: its reader, header positions and path.
struct Input {
    path: PathBuf,
    reader: csv::Reader<BufReader<File>>,
    header: Vec<String>,
}

impl Input {
    fn open(path: &Path) -> Result<Self, HistoryError> {
        let file = File::open(path).map_err(|error| DataError::Io {
            path: path.to_owned(),
            error,
        })?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(BufReader::with_capacity(1 << 20, file));
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| convert_csv_error(path, e))?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect();
        let mut names = std::collections::HashSet::new();
        if let Some(twice) = header.iter().find(|h| !names.insert(h.as_str())) {
            return Err(DataError::DuplicateColumn {
                path: path.to_owned(),
                column: twice.clone(),
            }
            .into());
        }
        Ok(Input {
            path: path.to_owned(),
            reader,
            header,
        })
    }

    /// The 0-based position of `column`.
    fn column(&self, column: &str, why: &str) -> Result<usize, HistoryError> {
        self.header
            .iter()
            .position(|h| h == column)
            .ok_or_else(|| HistoryError::MissingColumn {
                path: self.path.clone(),
                column: column.to_owned(),
                why: why.to_owned(),
            })
    }

    /// Reads the next record; `false` at the end.
    fn next(&mut self, record: &mut csv::StringRecord) -> Result<bool, HistoryError> {
        self.reader
            .read_record(record)
            .map_err(|e| convert_csv_error(&self.path, e).into())
    }

    fn problem(&self, record: &csv::StringRecord, column: usize, problem: String) -> HistoryError {
        DataError::Cell {
            path: self.path.clone(),
            line: line_of(record),
            column: column + 1,
            name: self.header[column].clone(),
            problem,
        }
        .into()
    }

    /// The account index of the id in `column`.
    fn account(
        &self,
        record: &csv::StringRecord,
        column: usize,
        index: &HashMap<String, usize>,
    ) -> Result<usize, HistoryError> {
        let id = record[column].trim();
        index.get(id).copied().ok_or_else(|| {
            self.problem(
                record,
                column,
                format!("account {id:?} is not in accounts.csv"),
            )
        })
    }

    fn day(&self, record: &csv::StringRecord, column: usize) -> Result<i64, HistoryError> {
        let text = record[column].trim();
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map(day_number)
            .map_err(|_| {
                self.problem(
                    record,
                    column,
                    format!("{text:?} is not a date (expected YYYY-MM-DD)"),
                )
            })
    }
}

fn line_of(record: &csv::StringRecord) -> u64 {
    record.position().map_or(0, |p| p.line())
}

/// Accounts as read, and each id's position among them.
type Accounts = (Vec<Account>, HashMap<String, usize>);

fn read_accounts(path: &Path, plan: &Plan, template: &Template) -> Result<Accounts, HistoryError> {
    let mut input = Input::open(path)?;
    let id_column = input.column("account_id", "")?;
    let carried = plan
        .carried
        .iter()
        .map(|c| input.column(c, "; the template uses it as a feature or extra column"))
        .collect::<Result<Vec<_>, _>>()?;
    // The template feature read from each carried cell, if any: its cells
    // are checked here, where the line is still that of accounts.csv.
    let mut checked: Vec<Option<&FeatureSpec>> = vec![None; carried.len()];
    for (source, spec) in plan.features.iter().zip(&template.features) {
        if let Source::Cell(cell) = source {
            checked[*cell] = Some(spec);
        }
    }
    let mut accounts = Vec::new();
    let mut index = HashMap::new();
    let mut lines = HashMap::new();
    let mut record = csv::StringRecord::new();
    while input.next(&mut record)? {
        let id = record[id_column].trim();
        if id.is_empty() {
            return Err(input.problem(&record, id_column, "the account id is empty".into()));
        }
        if let Some(first) = lines.insert(id.to_owned(), line_of(&record)) {
            return Err(input.problem(
                &record,
                id_column,
                format!("account {id:?} is already on line {first}"),
            ));
        }
        for (&column, spec) in carried.iter().zip(&checked) {
            if let Some(problem) = spec.and_then(|spec| {
                crate::dataset::cell_problem(record[column].trim(), spec, template)
            }) {
                return Err(input.problem(&record, column, problem));
            }
        }
        index.insert(id.to_owned(), accounts.len());
        accounts.push(Account {
            id: id.to_owned(),
            cells: carried.iter().map(|&c| record[c].to_owned()).collect(),
            ..Account::default()
        });
    }
    Ok((accounts, index))
}

/// Accounts, their feature cells and their signals from the service's
/// store: stored feature values fill the feature cells, profile fields
/// (`name`, `segment`, `region`, `plan`, `annual_contract_value`,
/// `renewal_date`) the extra columns.
fn read_store(
    url: &str,
    plan: &Plan,
    template: &Template,
    bounds: &mut Bounds,
) -> Result<(Accounts, u64), HistoryError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| DataError::Io {
            path: PathBuf::from(url),
            error,
        })?;
    let (records, signals) = runtime.block_on(async {
        let store = Store::open_existing(url).await?;
        let records = store.load_accounts().await?;
        let signals = store.load_signals_since(i64::MIN).await?;
        store.close().await;
        Ok::<_, StoreError>((records, signals))
    })?;
    let (yes, no) = (
        template.booleans.true_values[0].clone(),
        template.booleans.false_values[0].clone(),
    );
    let mut accounts = Vec::with_capacity(records.len());
    let mut index = HashMap::with_capacity(records.len());
    for record in records {
        let cells = plan
            .carried
            .iter()
            .map(|column| {
                Ok(match record.features.get(column) {
                    Some(StoredValue::Number(v)) => v.to_string(),
                    Some(StoredValue::Text(t)) => t.clone(),
                    Some(StoredValue::Bool(b)) => {
                        if *b {
                            yes.clone()
                        } else {
                            no.clone()
                        }
                    }
                    None => match column.as_str() {
                        "name" => record.name.clone(),
                        "segment" => record.segment.clone(),
                        "region" => record.region.clone(),
                        "plan" => record.plan.clone(),
                        "annual_contract_value" => record.annual_contract_value.to_string(),
                        "renewal_date" => record.renewal_date.clone().unwrap_or_default(),
                        // A feature the account has no stored value for is
                        // missing, as an empty cell would be.
                        _ if template.features.iter().any(|f| &f.name == column) => String::new(),
                        _ => {
                            return Err(HistoryError::MissingColumn {
                                path: PathBuf::from(url),
                                column: column.clone(),
                                why: "; in the store an extra column must be a profile field \
                                      (name, segment, region, plan, annual_contract_value, \
                                      renewal_date) or a stored feature"
                                    .to_owned(),
                            });
                        }
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        index.insert(record.account_id.clone(), accounts.len());
        accounts.push(Account {
            id: record.account_id,
            cells,
            ..Account::default()
        });
    }
    let count = signals.len() as u64;
    for signal in signals {
        // The store only holds accounts and kinds it accepted.
        let (Some(&account), Ok(kind)) = (index.get(&signal.account_id), signal.kind.parse())
        else {
            continue;
        };
        let day = signal.occurred_at_micros.div_euclid(DAY_MICROS);
        bounds.see(day);
        bounds.first_signal_day = Some(bounds.first_signal_day.map_or(day, |d| d.min(day)));
        accounts[account].events.push(Event {
            at: signal.occurred_at_micros,
            kind,
            value: signal.value,
        });
    }
    Ok(((accounts, index), count))
}

fn read_subscriptions(
    path: &Path,
    accounts: &mut [Account],
    index: &HashMap<String, usize>,
    bounds: &mut Bounds,
) -> Result<(), HistoryError> {
    let mut input = Input::open(path)?;
    let id_column = input.column("account_id", "")?;
    let start_column = input.column("start", "")?;
    let end_column = input.column("end", "")?;
    let mut record = csv::StringRecord::new();
    while input.next(&mut record)? {
        let account = input.account(&record, id_column, index)?;
        let start = input.day(&record, start_column)?;
        let end = if record[end_column].trim().is_empty() {
            None
        } else {
            Some(input.day(&record, end_column)?)
        };
        if let Some(end) = end.filter(|&end| end <= start) {
            return Err(input.problem(
                &record,
                end_column,
                format!(
                    "the period ends ({}) on or before it starts ({})",
                    date_of(end),
                    date_of(start)
                ),
            ));
        }
        bounds.see(start);
        if let Some(end) = end {
            bounds.see(end);
        }
        accounts[account]
            .periods
            .push((start, end, line_of(&record)));
    }

    for account in accounts.iter_mut() {
        account
            .periods
            .sort_by_key(|&(start, _, line)| (start, line));
        for pair in account.periods.windows(2) {
            let ((start, end, line), (next_start, next_end, next_line)) = (pair[0], pair[1]);
            if end.is_none_or(|end| next_start < end) {
                // Report whichever of the two comes later in the file.
                let (at, other) = if next_line > line {
                    ((next_start, next_end, next_line), (start, end, line))
                } else {
                    ((start, end, line), (next_start, next_end, next_line))
                };
                return Err(DataError::Cell {
                    path: path.to_owned(),
                    line: at.2,
                    column: start_column + 1,
                    name: input.header[start_column].clone(),
                    problem: format!(
                        "period {} of account {:?} overlaps its period {} on line {}",
                        shown_period(at.0, at.1),
                        account.id,
                        shown_period(other.0, other.1),
                        other.2
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

fn shown_period(start: i64, end: Option<i64>) -> String {
    match end {
        Some(end) => format!("{}..{}", date_of(start), date_of(end)),
        None => format!("{}..(running)", date_of(start)),
    }
}

fn read_signals(
    path: &Path,
    accounts: &mut [Account],
    index: &HashMap<String, usize>,
    bounds: &mut Bounds,
    progress: bool,
) -> Result<(u64, u64), HistoryError> {
    let mut input = Input::open(path)?;
    let id_column = input.column("event_id", "")?;
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0_u64;
    let account_column = input.column("account_id", "")?;
    let kind_column = input.column("kind", "")?;
    let value_column = input.column("value", "")?;
    let time_column = input.column("time", "")?;
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let bar = progress_bar(progress, size, "signals");
    let mut record = csv::StringRecord::new();
    let mut count = 0_u64;
    while input.next(&mut record)? {
        let event_id = record[id_column].trim();
        if event_id.is_empty() {
            return Err(input.problem(&record, id_column, "the event id is empty".into()));
        }
        let account = input.account(&record, account_column, index)?;
        let kind: SignalKind = record[kind_column]
            .trim()
            .parse()
            .map_err(|problem| input.problem(&record, kind_column, problem))?;
        let text = record[value_column].trim();
        let value: f64 = text.parse().map_err(|_| {
            input.problem(&record, value_column, format!("{text:?} is not a number"))
        })?;
        kind.check_value(value)
            .map_err(|problem| input.problem(&record, value_column, problem))?;
        let text = record[time_column].trim();
        let at = DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp_micros())
            .map_err(|_| {
                input.problem(
                    &record,
                    time_column,
                    format!(
                        "{text:?} is not a time (expected RFC 3339, e.g. 2024-01-31T09:30:00Z)"
                    ),
                )
            })?;
        if at < EARLIEST_SIGNAL_MICROS {
            return Err(input.problem(
                &record,
                time_column,
                format!("{text:?} is before 2000-01-01; is it in the wrong unit?"),
            ));
        }
        // Checked in full first, so a bad repeat is still reported.
        if !seen.insert(event_id.to_owned()) {
            duplicates += 1;
            continue;
        }
        let day = at.div_euclid(DAY_MICROS);
        bounds.see(day);
        bounds.first_signal_day = Some(bounds.first_signal_day.map_or(day, |d| d.min(day)));
        accounts[account].events.push(Event { at, kind, value });
        count += 1;
        if count % 65_536 == 0 {
            bar.set_position(record.position().map_or(0, |p| p.byte()));
        }
    }
    bar.finish_and_clear();
    Ok((count, duplicates))
}

/// The observation days the settings and the data give.
fn observation_dates(
    settings: &HistorySettings,
    plan: &Plan,
    bounds: &Bounds,
) -> Result<Vec<i64>, String> {
    let (Some(first_day), Some(last_day)) = (bounds.first_day, bounds.last_day) else {
        return Err("the input has no subscriptions and no signals".into());
    };
    let data_end = settings.data_end.map_or(last_day + 1, day_number);
    let label_reach = i64::from(settings.lead_days)
        + i64::from(settings.horizon_days)
        + i64::from(settings.renewal_gap_days);
    let first = settings.first_observation.map_or_else(
        || bounds.first_signal_day.unwrap_or(first_day) + i64::from(plan.longest_window),
        day_number,
    );
    let last = settings
        .last_observation
        .map_or(data_end - label_reach, day_number);
    if last + label_reach > data_end {
        return Err(format!(
            "the last observation ({}) plus lead, horizon and renewal gap ({label_reach} days) \
             runs past the end of the data ({}); labels there would be unknown. Set an earlier \
             `history.last_observation` or the real `history.data_end`",
            date_of(last),
            date_of(data_end)
        ));
    }
    if first > last {
        return Err(format!(
            "no observation date fits: the first would be {} and the last {}",
            date_of(first),
            date_of(last)
        ));
    }
    let step = i64::from(settings.interval_days);
    Ok((0..)
        .map(|k| first + k * step)
        .take_while(|&d| d <= last)
        .collect())
}

fn write_rows(
    out: &Path,
    template: &Template,
    settings: &HistorySettings,
    plan: &Plan,
    accounts: &[Account],
    dates: &[i64],
) -> Result<RowsSummary, HistoryError> {
    let write_error = |error: csv::Error| HistoryError::Write {
        path: out.to_owned(),
        error: match error.into_kind() {
            csv::ErrorKind::Io(error) => error,
            other => std::io::Error::other(format!("{other:?}")),
        },
    };
    let mut writer = csv::Writer::from_path(out).map_err(write_error)?;
    let mut header = vec![
        template.id_column.as_str(),
        plan.date_column.as_str(),
        template.outcome.column.as_str(),
    ];
    header.extend(template.features.iter().map(|f| f.name.as_str()));
    header.extend(settings.extra_columns.iter().map(String::as_str));
    writer.write_record(&header).map_err(write_error)?;

    let positive = template.outcome.positive[0].as_str();
    let negative = template.outcome.negative[0].as_str();
    let lead = i64::from(settings.lead_days);
    let horizon = i64::from(settings.horizon_days);
    let extras = plan.carried.len() - settings.extra_columns.len();
    let mut summary = RowsSummary {
        rows: 0,
        positives: 0,
        accounts: 0,
        accounts_with_rows: 0,
        signals: 0,
        duplicate_signals: 0,
        observation_dates: Vec::new(),
    };
    let mut events = Vec::new();
    let mut fields: Vec<String> = Vec::with_capacity(header.len());
    for account in accounts {
        let churns = churn_days(&account.periods, i64::from(settings.renewal_gap_days));
        events.clear();
        events.extend_from_slice(&account.events);
        // Stable: events at the same instant keep their file order.
        events.sort_by_key(|e: &Event| e.at);
        let mut any = false;
        for &day in dates {
            let active = account
                .periods
                .iter()
                .any(|&(start, end, _)| start <= day && end.is_none_or(|end| day < end));
            if !active {
                continue;
            }
            let window = day + lead..day + lead + horizon;
            let churned = churns.iter().any(|c| window.contains(c));
            let as_of = day * DAY_MICROS;
            fields.clear();
            fields.push(account.id.clone());
            fields.push(date_of(day).to_string());
            fields.push(if churned { positive } else { negative }.to_owned());
            for source in &plan.features {
                fields.push(match source {
                    Source::Signal(signal) => signal
                        .value_at(&events, as_of)
                        .map_or_else(String::new, |v| v.to_string()),
                    Source::Cell(i) => account.cells[*i].clone(),
                });
            }
            fields.extend(account.cells[extras..].iter().cloned());
            writer.write_record(&fields).map_err(write_error)?;
            summary.rows += 1;
            summary.positives += u64::from(churned);
            any = true;
        }
        summary.accounts_with_rows += u64::from(any);
    }
    writer.flush().map_err(|error| HistoryError::Write {
        path: out.to_owned(),
        error,
    })?;
    Ok(summary)
}

/// Days on which a period ended without another starting within `gap`
/// days; `periods` are sorted and do not overlap.
fn churn_days(periods: &[(i64, Option<i64>, u64)], gap: i64) -> Vec<i64> {
    periods
        .iter()
        .enumerate()
        .filter_map(|(i, &(_, end, _))| {
            let end = end?;
            let renewed = periods
                .get(i + 1)
                .is_some_and(|&(next, _, _)| next - end <= gap);
            (!renewed).then_some(end)
        })
        .collect()
}

fn progress_bar(visible: bool, length: u64, label: &'static str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{msg:>8} [{bar:30}] {bytes}/{total_bytes} ({eta})")
        .expect("the progress template is valid");
    bar.set_style(style);
    bar.set_message(label);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
        name = "t"
        id_column = "account_id"
        date_column = "observed_at"
        outcome = { column = "churned", positive = "yes", negative = "no" }

        [history]
        interval_days = 7
        first_observation = 2024-02-01
        horizon_days = 30

        [[feature]]
        name = "logins_28d"
        kind = "numeric"
        category = "engagement"
        signal = { kind = "login", aggregate = "count", window_days = 28 }
    "#;

    #[test]
    fn history_table_takes_toml_dates_and_defaults() {
        let settings = HistorySettings::from_toml(TEMPLATE).unwrap();

        assert_eq!(settings.interval_days, 7);
        assert_eq!(
            settings.first_observation,
            NaiveDate::from_ymd_opt(2024, 2, 1)
        );
        assert_eq!(settings.last_observation, None);
        assert_eq!(settings.renewal_gap_days, 30);
        assert_eq!(settings.lead_days, 0);
        // The trainer's own parser accepts the same file.
        Template::from_toml(TEMPLATE).unwrap();
    }

    #[test]
    fn unknown_history_key_is_an_error_with_its_line() {
        let text = TEMPLATE.replace("horizon_days = 30", "horizon = 30");

        let err = HistorySettings::from_toml(&text).unwrap_err().to_string();

        assert!(err.contains("unknown field `horizon`"), "{err}");
        assert!(err.contains("line 10"), "{err}");
    }

    #[test]
    fn a_period_renewed_within_the_gap_is_not_churn() {
        let periods = [
            (0, Some(100), 2),
            (110, Some(200), 3),
            (260, Some(300), 4),
            (400, None, 5),
        ];

        // 100 -> 110 renews within 30 days; 200 -> 260 does not; 300 -> 400
        // does not; the running period never churns.
        assert_eq!(churn_days(&periods, 30), vec![200, 300]);
        assert_eq!(churn_days(&periods, 60), vec![300]);
    }

    #[test]
    fn defaults_leave_room_for_windows_and_labels() {
        let (template, settings) = (
            Template::from_toml(TEMPLATE).unwrap(),
            HistorySettings {
                first_observation: None,
                ..HistorySettings::from_toml(TEMPLATE).unwrap()
            },
        );
        let plan = Plan::new(&template, &settings).unwrap();
        let bounds = Bounds {
            first_signal_day: Some(1000),
            first_day: Some(900),
            last_day: Some(1199),
        };

        let dates = observation_dates(&settings, &plan, &bounds).unwrap();

        // First: 28 days after the earliest signal; last: 60 days (horizon
        // and gap) before the day after the latest date.
        assert_eq!(dates.first(), Some(&1028));
        assert!(*dates.last().unwrap() <= 1200 - 60);
        assert!(dates.windows(2).all(|w| w[1] - w[0] == 7));
    }
}
