//! Error types, one per layer: templates, training data, training, model
//! artifacts. Every variant carries what a reader needs to find the problem:
//! the file, the line and column, the feature. Per-account scoring errors
//! live with the scoring code in [`crate::scoring`].

use std::{io, path::PathBuf};

use thiserror::Error;

fn shown(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map_or_else(|| "template".to_owned(), |p| p.display().to_string())
}

/// A template that cannot be read or makes no sense.
#[derive(Debug, Error)]
pub enum TemplateError {
    /// The file could not be read.
    #[error("cannot read template {}: {error}", path.display())]
    Io {
        /// The template file.
        path: PathBuf,
        /// The cause; part of the message, not a separate cause, so it is
        /// printed once.
        error: io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type; the message
    /// carries the line and column.
    #[error("{}: {message}", shown(path))]
    Parse {
        /// The template file, when read from one.
        path: Option<PathBuf>,
        /// The parser's message, with position.
        message: String,
    },
    /// Settings that parse but contradict each other or are out of range.
    #[error("{}: {message}", shown(path))]
    Invalid {
        /// The template file, when read from one.
        path: Option<PathBuf>,
        /// What is wrong, naming the setting.
        message: String,
    },
}

impl TemplateError {
    pub(crate) fn with_path(self, file: &std::path::Path) -> Self {
        match self {
            Self::Parse { message, .. } => Self::Parse {
                path: Some(file.to_owned()),
                message,
            },
            Self::Invalid { message, .. } => Self::Invalid {
                path: Some(file.to_owned()),
                message,
            },
            io @ Self::Io { .. } => io,
        }
    }
}

/// Training data that cannot be read as the template describes it.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The data file.
        path: PathBuf,
        /// The cause; part of the message, not a separate cause, so it is
        /// printed once.
        error: io::Error,
    },
    /// The CSV itself is malformed (for example an unterminated quote).
    #[error("{}, line {line}: malformed CSV: {message}", path.display())]
    Csv {
        /// The data file.
        path: PathBuf,
        /// 1-based line where the record starts.
        line: u64,
        /// The CSV reader's message.
        message: String,
    },
    /// A record with a different number of fields than the header.
    #[error(
        "{}, line {line}: expected {expected} columns as in the header, found {found}",
        path.display()
    )]
    ColumnCount {
        /// The data file.
        path: PathBuf,
        /// 1-based line where the record starts.
        line: u64,
        /// Columns in the header.
        expected: usize,
        /// Columns in this record.
        found: usize,
    },
    /// A cell that is not valid UTF-8.
    #[error("{}, line {line}, column {column} ({name}): not valid UTF-8", path.display())]
    InvalidUtf8 {
        /// The data file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// 1-based column number.
        column: usize,
        /// Column name from the header.
        name: String,
    },
    /// The file has no header or no data rows.
    #[error("{}: {message}", path.display())]
    Empty {
        /// The data file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// The template names a column the file does not have.
    #[error("{}: the template names column {column:?}, which the header does not have", path.display())]
    MissingColumn {
        /// The data file.
        path: PathBuf,
        /// The column the template expects.
        column: String,
    },
    /// A column the template does not mention; it must be a feature or be
    /// listed under `ignore`, so nothing is dropped silently.
    #[error(
        "{}, line 1, column {position} ({column}): the template does not mention this column; \
         declare it as a [[feature]] or list it under `ignore`",
        path.display()
    )]
    UnlistedColumn {
        /// The data file.
        path: PathBuf,
        /// The column name.
        column: String,
        /// 1-based column number.
        position: usize,
    },
    /// Two header cells with the same name.
    #[error("{}, line 1: column {column:?} appears twice in the header", path.display())]
    DuplicateColumn {
        /// The data file.
        path: PathBuf,
        /// The repeated name.
        column: String,
    },
    /// A cell whose value the template cannot accept.
    #[error("{}, line {line}, column {column} ({name}): {problem}", path.display())]
    Cell {
        /// The data file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// 1-based column number.
        column: usize,
        /// Column name from the header.
        name: String,
        /// What is wrong with the value, quoting it.
        problem: String,
    },
}

/// Why training failed.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The template is unusable.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The data is unusable.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The outcome has only one class in the rows that must hold both.
    #[error(
        "{}, column {column:?}: {rows_label} hold only {class:?} outcomes ({rows} rows); \
         a churn model needs both churned and retained accounts",
        path.display()
    )]
    OneClass {
        /// The data file.
        path: PathBuf,
        /// The outcome column.
        column: String,
        /// Which rows: "the data", "the training split", "the test split".
        rows_label: &'static str,
        /// The only class present: "churned" or "retained".
        class: &'static str,
        /// How many rows.
        rows: usize,
    },
    /// A feature without variation in the training rows cannot be learned.
    #[error(
        "{}, column {feature:?}: the feature is constant in the training rows (every value is \
         {value}); remove it or list its column under `ignore`",
        path.display()
    )]
    ConstantFeature {
        /// The data file.
        path: PathBuf,
        /// The feature.
        feature: String,
        /// Its only value.
        value: String,
    },
    /// Every training value of a feature is missing.
    #[error("{}, column {feature:?}: the feature is missing in every training row", path.display())]
    AllMissing {
        /// The data file.
        path: PathBuf,
        /// The feature.
        feature: String,
    },
    /// The solver failed.
    #[error("fitting the logistic regression failed: {0}")]
    Fit(String),
    /// The champion model cannot be scored on the held-out rows.
    #[error("champion {champion}: {reason}")]
    Champion {
        /// The champion's model version.
        champion: String,
        /// What stops it being scored, naming the feature or row.
        reason: String,
    },
    /// The artifact could not be written.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// The cause; part of the message, not a separate cause, so it is
        /// printed once.
        error: io::Error,
    },
}

/// A model artifact that cannot be loaded or served.
#[derive(Debug, Error)]
pub enum ArtifactError {
    /// The file could not be read.
    #[error("cannot read model artifact {path}: {error}")]
    Io {
        /// The artifact file.
        path: String,
        /// The cause; part of the message, not a separate cause, so it is
        /// printed once.
        error: io::Error,
    },
    /// Not JSON, or JSON that does not match the artifact format.
    #[error("model artifact {path}, line {line}, column {column}: {message}")]
    Parse {
        /// The artifact file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A format this build cannot read.
    #[error("model artifact {path} has format {found:?}; this build reads {expected:?}")]
    Format {
        /// The artifact file.
        path: String,
        /// Format tag and version found.
        found: String,
        /// Format tag and version supported.
        expected: String,
    },
    /// Well-formed JSON whose content cannot be right.
    #[error("model artifact {path} is inconsistent: {message}")]
    Invalid {
        /// The artifact file.
        path: String,
        /// What is wrong, naming the feature or field.
        message: String,
    },
}
