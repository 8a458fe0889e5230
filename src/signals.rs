//! Signals and the features derived from them.
//!
//! Engagement, support, satisfaction and billing data arrive as dated events
//! (signals). A template feature may be declared as an aggregate of one
//! signal kind over a trailing window: count, sum, mean or last value over N
//! days, optionally divided by the same aggregate over a longer window to
//! express a trend. [`SignalFeature::value_at`] is the one definition of
//! such a feature; training rows and the live server both compute features
//! with it, so a feature means exactly the same in both.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Microseconds in a day.
pub const DAY_MICROS: i64 = 86_400 * 1_000_000;

/// The kinds of signal the service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// A user logged in (value: number of logins, usually 1).
    Login,
    /// Active users counted for a period (value: the count).
    ActiveUsers,
    /// A product feature was used (value: number of uses).
    FeatureUsed,
    /// A support ticket was opened (value: 1).
    TicketOpened,
    /// A support ticket was resolved (value: hours to resolve).
    TicketResolved,
    /// A support ticket was escalated (value: 1).
    TicketEscalated,
    /// A CSAT survey answer (value: 1-5).
    CsatResponse,
    /// An NPS survey answer (value: 0-10).
    NpsResponse,
    /// An invoice was paid late (value: days late).
    InvoicePaidLate,
}

impl SignalKind {
    /// Every kind, in declaration order.
    pub const ALL: [SignalKind; 9] = [
        SignalKind::Login,
        SignalKind::ActiveUsers,
        SignalKind::FeatureUsed,
        SignalKind::TicketOpened,
        SignalKind::TicketResolved,
        SignalKind::TicketEscalated,
        SignalKind::CsatResponse,
        SignalKind::NpsResponse,
        SignalKind::InvoicePaidLate,
    ];

    /// The kind's name as templates and the store spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Login => "login",
            SignalKind::ActiveUsers => "active_users",
            SignalKind::FeatureUsed => "feature_used",
            SignalKind::TicketOpened => "ticket_opened",
            SignalKind::TicketResolved => "ticket_resolved",
            SignalKind::TicketEscalated => "ticket_escalated",
            SignalKind::CsatResponse => "csat_response",
            SignalKind::NpsResponse => "nps_response",
            SignalKind::InvoicePaidLate => "invoice_paid_late",
        }
    }

    /// Whether this kind's values are whole numbers (counts and survey
    /// answers), as opposed to measured hours or days.
    pub fn whole(self) -> bool {
        !matches!(
            self,
            SignalKind::TicketResolved | SignalKind::InvoicePaidLate
        )
    }

    /// Checks a value for this kind: finite, within the kind's range (at
    /// most [`MAX_SIGNAL_VALUE`], so no window's sum can overflow), and
    /// whole for counts and survey answers.
    ///
    /// # Errors
    /// A sentence naming the accepted range.
    pub fn check_value(self, value: f64) -> Result<(), String> {
        if !value.is_finite() {
            return Err(format!("value {value} is not a finite number"));
        }
        let (low, high) = match self {
            SignalKind::CsatResponse => (1.0, 5.0),
            SignalKind::NpsResponse => (0.0, 10.0),
            _ => (0.0, MAX_SIGNAL_VALUE),
        };
        if value < low || value > high {
            return Err(format!(
                "{} takes values from {low} to {high}, got {value}",
                self.as_str()
            ));
        }
        if self.whole() && value.fract() != 0.0 {
            return Err(format!(
                "{} takes whole numbers, got {value}",
                self.as_str()
            ));
        }
        Ok(())
    }
}

/// The largest value one signal may carry: far above any real count of
/// logins, hours to resolve or days late, and small enough that sums over
/// any window stay finite.
pub const MAX_SIGNAL_VALUE: f64 = 1e9;

/// The earliest time a signal may carry (2000-01-01T00:00:00Z, in
/// microseconds): anything before is a unit or clock error.
pub const EARLIEST_SIGNAL_MICROS: i64 = 946_684_800_000_000;

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignalKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SignalKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown signal kind {s:?}"))
    }
}

/// How the signals in a window become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// Number of events (0 when there are none).
    Count,
    /// Sum of values (0 when there are none).
    Sum,
    /// Mean of values (missing when there are none).
    Mean,
    /// Value of the latest event (missing when there are none).
    Last,
}

/// A feature defined as an aggregate of one signal kind over a trailing
/// window ending at the observation time (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignalFeature {
    /// The signal kind aggregated.
    pub kind: SignalKind,
    /// The aggregate.
    pub aggregate: Aggregate,
    /// Window length in days.
    pub window_days: u32,
    /// When set, the feature is the aggregate over `window_days` divided by
    /// the aggregate over this longer window: a trend. Missing when the
    /// longer window's aggregate is zero or missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_to_days: Option<u32>,
}

/// One signal as the feature computation needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    /// When it happened, microseconds since the epoch.
    pub at: i64,
    /// Its kind.
    pub kind: SignalKind,
    /// Its value.
    pub value: f64,
}

impl SignalFeature {
    /// Checks the window settings.
    ///
    /// # Errors
    /// A sentence naming the bad setting.
    pub fn check(&self) -> Result<(), String> {
        if self.window_days == 0 || self.window_days > 3650 {
            return Err(format!(
                "window_days must be 1 to 3650, got {}",
                self.window_days
            ));
        }
        match self.ratio_to_days {
            Some(long) if long <= self.window_days || long > 3650 => Err(format!(
                "ratio_to_days must be longer than window_days ({}) and at most 3650, got {long}",
                self.window_days
            )),
            _ => Ok(()),
        }
    }

    /// The longest window this feature looks back over, in days.
    pub fn lookback_days(&self) -> u32 {
        self.ratio_to_days.unwrap_or(self.window_days)
    }

    /// The feature's value at `as_of` (microseconds) from `events`, which
    /// must be sorted by time. Only events strictly before `as_of` count, so
    /// nothing from the future of an observation can leak into it.
    pub fn value_at(&self, events: &[Event], as_of: i64) -> Option<f64> {
        let value = aggregate(self, events, as_of, self.window_days)?;
        match self.ratio_to_days {
            None => Some(value),
            Some(long) => {
                let base = aggregate(self, events, as_of, long)?;
                (base != 0.0).then(|| value / base)
            }
        }
    }
}

fn aggregate(spec: &SignalFeature, events: &[Event], as_of: i64, days: u32) -> Option<f64> {
    let start = as_of.saturating_sub(i64::from(days) * DAY_MICROS);
    let first = events.partition_point(|e| e.at < start);
    let end = events.partition_point(|e| e.at < as_of);
    let mut values = events[first..end.max(first)]
        .iter()
        .filter(|e| e.kind == spec.kind)
        .map(|e| e.value);
    match spec.aggregate {
        Aggregate::Count => Some(values.count() as f64),
        Aggregate::Sum => Some(values.sum()),
        Aggregate::Mean => {
            let (n, total) = values.fold((0usize, 0.0), |(n, t), v| (n + 1, t + v));
            (n > 0).then(|| total / n as f64)
        }
        Aggregate::Last => values.next_back(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64) -> i64 {
        1_700_000_000_000_000 + day * DAY_MICROS
    }

    fn events() -> Vec<Event> {
        let mut e = vec![
            Event {
                at: at(-100),
                kind: SignalKind::Login,
                value: 1.0,
            },
            Event {
                at: at(-60),
                kind: SignalKind::Login,
                value: 1.0,
            },
            Event {
                at: at(-20),
                kind: SignalKind::Login,
                value: 1.0,
            },
            Event {
                at: at(-10),
                kind: SignalKind::CsatResponse,
                value: 2.0,
            },
            Event {
                at: at(-5),
                kind: SignalKind::Login,
                value: 1.0,
            },
            Event {
                at: at(-3),
                kind: SignalKind::CsatResponse,
                value: 4.0,
            },
            // The observation instant itself and later: never counted.
            Event {
                at: at(0),
                kind: SignalKind::Login,
                value: 1.0,
            },
            Event {
                at: at(3),
                kind: SignalKind::CsatResponse,
                value: 5.0,
            },
        ];
        e.sort_by_key(|e| e.at);
        e
    }

    fn feature(kind: SignalKind, aggregate: Aggregate, window_days: u32) -> SignalFeature {
        SignalFeature {
            kind,
            aggregate,
            window_days,
            ratio_to_days: None,
        }
    }

    #[test]
    fn aggregates_over_the_trailing_window() {
        let e = events();
        assert_eq!(
            feature(SignalKind::Login, Aggregate::Count, 28).value_at(&e, at(0)),
            Some(2.0)
        );
        assert_eq!(
            feature(SignalKind::Login, Aggregate::Count, 90).value_at(&e, at(0)),
            Some(3.0)
        );
        assert_eq!(
            feature(SignalKind::CsatResponse, Aggregate::Mean, 28).value_at(&e, at(0)),
            Some(3.0)
        );
        assert_eq!(
            feature(SignalKind::CsatResponse, Aggregate::Last, 28).value_at(&e, at(0)),
            Some(4.0)
        );
        assert_eq!(
            feature(SignalKind::CsatResponse, Aggregate::Sum, 7).value_at(&e, at(0)),
            Some(4.0)
        );
    }

    #[test]
    fn empty_windows_are_zero_or_missing_by_aggregate() {
        let e = events();
        assert_eq!(
            feature(SignalKind::TicketOpened, Aggregate::Count, 28).value_at(&e, at(0)),
            Some(0.0)
        );
        assert_eq!(
            feature(SignalKind::TicketOpened, Aggregate::Sum, 28).value_at(&e, at(0)),
            Some(0.0)
        );
        assert_eq!(
            feature(SignalKind::NpsResponse, Aggregate::Mean, 28).value_at(&e, at(0)),
            None
        );
        assert_eq!(
            feature(SignalKind::NpsResponse, Aggregate::Last, 28).value_at(&e, at(0)),
            None
        );
    }

    #[test]
    fn future_events_never_count() {
        let e = events();
        // The CSAT of 5 on day +3 and the login at the observation instant
        // are both excluded.
        assert_eq!(
            feature(SignalKind::CsatResponse, Aggregate::Last, 3650).value_at(&e, at(0)),
            Some(4.0)
        );
        assert_eq!(
            feature(SignalKind::Login, Aggregate::Count, 3650).value_at(&e, at(0)),
            Some(4.0)
        );
    }

    #[test]
    fn ratio_of_windows_expresses_a_trend() {
        let e = events();
        let trend = SignalFeature {
            ratio_to_days: Some(90),
            ..feature(SignalKind::Login, Aggregate::Count, 28)
        };
        assert_eq!(trend.value_at(&e, at(0)), Some(2.0 / 3.0));
        let none = SignalFeature {
            ratio_to_days: Some(90),
            ..feature(SignalKind::TicketOpened, Aggregate::Count, 28)
        };
        assert_eq!(none.value_at(&e, at(0)), None, "0 / 0 is missing");
        assert!(
            SignalFeature {
                ratio_to_days: Some(28),
                ..trend
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn values_are_checked_per_kind() {
        assert!(SignalKind::NpsResponse.check_value(11.0).is_err());
        assert!(SignalKind::CsatResponse.check_value(0.0).is_err());
        assert!(SignalKind::Login.check_value(-1.0).is_err());
        assert!(SignalKind::Login.check_value(f64::NAN).is_err());
        assert!(SignalKind::InvoicePaidLate.check_value(12.0).is_ok());
        assert_eq!(
            "ticket_escalated".parse::<SignalKind>(),
            Ok(SignalKind::TicketEscalated)
        );
        assert!("tickets".parse::<SignalKind>().is_err());
    }
}
