//! Reads a training CSV as a template describes it: every declared column
//! present, every present column declared, every cell typed. Problems are
//! reported with the file, line and column where they are.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use chrono::{DateTime, NaiveDate};

use crate::{
    error::DataError,
    scoring::transform_numeric,
    template::{FeatureKind, FeatureSpec, MissingPolicy, Template},
};

/// Typed training rows, one column per template feature.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The file the rows came from.
    pub path: PathBuf,
    /// Account id per row.
    pub ids: Vec<String>,
    /// Outcome per row: true when the account churned.
    pub churned: Vec<bool>,
    /// Observation time per row (seconds since the epoch) when the template
    /// names a date column.
    pub dates: Option<Vec<i64>>,
    /// Values per feature, in template order; `None` is missing.
    pub columns: Vec<Column>,
}

/// One feature's values over all rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// Raw numbers (before clip and transform).
    Numeric(Vec<Option<f64>>),
    /// Booleans.
    Boolean(Vec<Option<bool>>),
    /// Category levels.
    Categorical(Vec<Option<String>>),
}

impl Column {
    fn new(kind: FeatureKind) -> Self {
        match kind {
            FeatureKind::Numeric => Column::Numeric(Vec::new()),
            FeatureKind::Boolean => Column::Boolean(Vec::new()),
            FeatureKind::Categorical => Column::Categorical(Vec::new()),
        }
    }

    /// Whether the value in `row` is missing.
    pub fn is_missing(&self, row: usize) -> bool {
        match self {
            Column::Numeric(v) => v[row].is_none(),
            Column::Boolean(v) => v[row].is_none(),
            Column::Categorical(v) => v[row].is_none(),
        }
    }
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.churned.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.churned.is_empty()
    }

    /// Reads `path` as `template` describes it, calling `progress` with the
    /// bytes read so far every few thousand rows.
    ///
    /// # Errors
    /// [`DataError`] for the first problem found, naming file, line and
    /// column.
    pub fn read(
        path: &Path,
        template: &Template,
        mut progress: impl FnMut(u64),
    ) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|error| DataError::Io {
            path: path.to_owned(),
            error,
        })?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(std::io::BufReader::new(file));
        let csv_error = |e: csv::Error| convert_csv_error(path, e);

        let header = reader.byte_headers().map_err(csv_error)?.clone();
        if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
            return Err(DataError::Empty {
                path: path.to_owned(),
                message: "the file has no header row".into(),
            });
        }
        let layout = Layout::new(path, &header, template)?;

        let mut data = Dataset {
            path: path.to_owned(),
            ids: Vec::new(),
            churned: Vec::new(),
            dates: template.date_column.as_ref().map(|_| Vec::new()),
            columns: template
                .features
                .iter()
                .map(|f| Column::new(f.kind))
                .collect(),
        };
        let mut record = csv::ByteRecord::new();
        // First line of each account id (and date, when rows are dated): a
        // repeated row would be fitted twice, or sit in both splits.
        let mut seen: std::collections::HashMap<(String, Option<i64>), u64> =
            std::collections::HashMap::new();
        while reader.read_byte_record(&mut record).map_err(csv_error)? {
            let line = record.position().map_or(0, |p| p.line());
            let row = Row {
                path,
                line,
                record: &record,
                header: &layout.names,
            };
            data.push(&row, &layout, template)?;
            let id = data.ids.last().expect("pushed above");
            if id.trim().is_empty() {
                return Err(row.problem(layout.id, "the account id is empty".into()));
            }
            let date = data.dates.as_ref().and_then(|d| d.last().copied());
            if let Some(first) = seen.insert((id.clone(), date), line) {
                return Err(row.problem(
                    layout.id,
                    match date {
                        Some(_) => format!(
                            "account {id:?} already has a row for this date, on line {first}"
                        ),
                        None => format!(
                            "account {id:?} is already on line {first}; each account takes one \
                             row, or name a `date_column` for one row per account and date"
                        ),
                    },
                ));
            }
            if data.len() % 4096 == 0 {
                progress(record.position().map_or(0, |p| p.byte()));
            }
        }
        if data.is_empty() {
            return Err(DataError::Empty {
                path: path.to_owned(),
                message: "the file has a header but no data rows".into(),
            });
        }
        Ok(data)
    }

    fn push(
        &mut self,
        row: &Row<'_>,
        layout: &Layout,
        template: &Template,
    ) -> Result<(), DataError> {
        self.ids.push(row.text(layout.id)?.to_owned());

        let outcome = row.text(layout.outcome)?.trim();
        let spec = &template.outcome;
        let churned = if spec.positive.iter().any(|p| p == outcome) {
            true
        } else if spec.negative.iter().any(|n| n == outcome) {
            false
        } else {
            return Err(row.problem(
                layout.outcome,
                format!(
                    "outcome {outcome:?} is neither positive {:?} nor negative {:?}",
                    spec.positive, spec.negative
                ),
            ));
        };
        self.churned.push(churned);

        if let (Some(dates), Some(column)) = (self.dates.as_mut(), layout.date) {
            let text = row.text(column)?.trim();
            let seconds = parse_date(text).ok_or_else(|| {
                row.problem(
                    column,
                    format!("{text:?} is not a date (expected YYYY-MM-DD or RFC 3339)"),
                )
            })?;
            dates.push(seconds);
        }

        for ((feature, column), &at) in template
            .features
            .iter()
            .zip(&mut self.columns)
            .zip(&layout.features)
        {
            let text = row.text(at)?.trim();
            let missing = template.missing_values.iter().any(|m| m.trim() == text);
            if missing && feature.missing == MissingPolicy::Reject {
                return Err(row.problem(at, rejected_missing(text, feature)));
            }
            match column {
                Column::Numeric(values) => {
                    let value = if missing {
                        None
                    } else {
                        Some(parse_number(text, feature).map_err(|p| row.problem(at, p))?)
                    };
                    values.push(value);
                }
                Column::Boolean(values) => {
                    let value = if missing {
                        None
                    } else {
                        Some(parse_bool(text, template).map_err(|p| row.problem(at, p))?)
                    };
                    values.push(value);
                }
                Column::Categorical(values) => {
                    values.push((!missing).then(|| text.to_owned()));
                }
            }
        }
        Ok(())
    }
}

fn rejected_missing(text: &str, feature: &FeatureSpec) -> String {
    format!(
        "value {text:?} is missing and feature {:?} has missing = \"reject\"; \
         fill it in the data or set `missing` in the template",
        feature.name
    )
}

fn parse_bool(text: &str, template: &Template) -> Result<bool, String> {
    template.booleans.parse(text).ok_or_else(|| {
        format!(
            "{text:?} is not a boolean (true: {:?}; false: {:?})",
            template.booleans.true_values, template.booleans.false_values
        )
    })
}

/// Why `text` (trimmed) cannot be `feature`'s value, as training would
/// read it: a missing value the template rejects, a number that does not
/// parse, is not finite or is outside the transform's domain, or a word
/// that is not one of the template's booleans. `None` when it can.
pub(crate) fn cell_problem(
    text: &str,
    feature: &FeatureSpec,
    template: &Template,
) -> Option<String> {
    if template.missing_values.iter().any(|m| m.trim() == text) {
        return (feature.missing == MissingPolicy::Reject).then(|| rejected_missing(text, feature));
    }
    match feature.kind {
        FeatureKind::Numeric => parse_number(text, feature).err(),
        FeatureKind::Boolean => parse_bool(text, template).err(),
        FeatureKind::Categorical => None,
    }
}

fn parse_number(text: &str, feature: &FeatureSpec) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !value.is_finite() {
        return Err(format!("{text:?} is not a finite number"));
    }
    transform_numeric(value, feature.clip, feature.transform)?;
    Ok(value)
}

/// Seconds since the epoch for `YYYY-MM-DD` (midnight UTC) or RFC 3339.
pub fn parse_date(text: &str) -> Option<i64> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp());
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp())
}

/// Header positions of the template's columns.
struct Layout {
    names: Vec<String>,
    id: usize,
    outcome: usize,
    date: Option<usize>,
    features: Vec<usize>,
}

impl Layout {
    fn new(path: &Path, header: &csv::ByteRecord, template: &Template) -> Result<Self, DataError> {
        let mut names = Vec::with_capacity(header.len());
        let mut position = HashMap::new();
        for (i, raw) in header.iter().enumerate() {
            let name = std::str::from_utf8(raw)
                .map_err(|_| DataError::InvalidUtf8 {
                    path: path.to_owned(),
                    line: 1,
                    column: i + 1,
                    name: String::from_utf8_lossy(raw).into_owned(),
                })?
                .trim()
                .to_owned();
            if position.insert(name.clone(), i).is_some() {
                return Err(DataError::DuplicateColumn {
                    path: path.to_owned(),
                    column: name,
                });
            }
            names.push(name);
        }
        let find = |column: &str| {
            position
                .get(column)
                .copied()
                .ok_or_else(|| DataError::MissingColumn {
                    path: path.to_owned(),
                    column: column.to_owned(),
                })
        };
        let layout = Layout {
            id: find(&template.id_column)?,
            outcome: find(&template.outcome.column)?,
            date: template.date_column.as_deref().map(find).transpose()?,
            features: template
                .features
                .iter()
                .map(|f| find(&f.name))
                .collect::<Result<_, _>>()?,
            names,
        };
        for ignored in &template.ignore {
            find(ignored)?;
        }
        let mentioned = |name: &str| {
            name == template.id_column
                || name == template.outcome.column
                || template.date_column.as_deref() == Some(name)
                || template.ignore.iter().any(|i| i == name)
                || template.features.iter().any(|f| f.name == name)
        };
        if let Some((i, name)) = layout.names.iter().enumerate().find(|(_, n)| !mentioned(n)) {
            return Err(DataError::UnlistedColumn {
                path: path.to_owned(),
                column: name.clone(),
                position: i + 1,
            });
        }
        Ok(layout)
    }
}

/// One record with what is needed to report a problem in it.
struct Row<'a> {
    path: &'a Path,
    line: u64,
    record: &'a csv::ByteRecord,
    header: &'a [String],
}

impl Row<'_> {
    fn text(&self, column: usize) -> Result<&str, DataError> {
        std::str::from_utf8(&self.record[column]).map_err(|_| DataError::InvalidUtf8 {
            path: self.path.to_owned(),
            line: self.line,
            column: column + 1,
            name: self.header[column].clone(),
        })
    }

    fn problem(&self, column: usize, problem: String) -> DataError {
        DataError::Cell {
            path: self.path.to_owned(),
            line: self.line,
            column: column + 1,
            name: self.header[column].clone(),
            problem,
        }
    }
}

/// A csv error as a data error naming the file and line (and, for invalid
/// UTF-8, the field).
pub(crate) fn convert_csv_error(path: &Path, error: csv::Error) -> DataError {
    let line = error.position().map_or(0, |p| p.line());
    match error.into_kind() {
        csv::ErrorKind::Io(error) => DataError::Io {
            path: path.to_owned(),
            error,
        },
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => DataError::ColumnCount {
            path: path.to_owned(),
            line: pos.map_or(line, |p| p.line()),
            expected: expected_len as usize,
            found: len as usize,
        },
        csv::ErrorKind::Utf8 { pos, err } => DataError::InvalidUtf8 {
            path: path.to_owned(),
            line: pos.map_or(line, |p| p.line()),
            column: err.field() + 1,
            name: format!("field {}", err.field() + 1),
        },
        other => DataError::Csv {
            path: path.to_owned(),
            line,
            message: format!("{other:?}"),
        },
    }
}
