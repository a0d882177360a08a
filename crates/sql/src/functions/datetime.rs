//! Trino date and time functions.
//!
//! FHIR stores dates as text (`birthdate` is `varchar`: "1956-08-03", and dateTimes carry
//! their offset: "2011-10-14T23:37:54+00:00"), so besides Arrow dates and timestamps every
//! function here also accepts ISO 8601 / FHIR date text. FHIR allows partial dates ("1980",
//! "1980-05"): fields they have are returned (`year('1980')` is 1980), fields they lack are
//! NULL (`month('1980')`), and `date('1980')` is NULL because no single day is meant. Text that
//! is no date at all is an error naming the value, as Trino's casts are.
//!
//! Fields are taken from the local time a value was written in (`hour('…T23:37:54-05:00')` is
//! 23), as Trino does for `timestamp with time zone`. Timestamps are computed in microseconds.

use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Date32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::compute::kernels::cast::cast;
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Field, FieldRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow::error::ArrowError;
use chrono::{
    DateTime, Datelike, FixedOffset, Months, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeDelta, TimeZone, Timelike,
};
use datafusion::common::Result as DFResult;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use super::{Strings, arrays, finish, fn_error, is_string, literal_str, plan_error};

/// Every date/time function.
pub fn udfs() -> Vec<Arc<ScalarUDF>> {
    let mut udfs: Vec<Arc<ScalarUDF>> = Part::ALL
        .iter()
        .map(|p| Arc::new(ScalarUDF::new_from_impl(DatePart::new(*p))))
        .collect();
    udfs.push(date_udf());
    udfs.push(Arc::new(ScalarUDF::new_from_impl(DateDiff::new())));
    udfs.push(Arc::new(ScalarUDF::new_from_impl(DateAdd::new())));
    udfs.push(Arc::new(ScalarUDF::new_from_impl(FromIso8601::new(false))));
    udfs.push(Arc::new(ScalarUDF::new_from_impl(FromIso8601::new(true))));
    udfs.push(Arc::new(ScalarUDF::new_from_impl(ToIso8601::new())));
    udfs
}

/// `date(x)`: a date from a date, timestamp or date text.
pub fn date_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(DateFn::new()))
}

/// Time zone used for timestamps this module creates from text.
pub const UTC: &str = "+00:00";

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

/// A date or point in time as written: possibly partial, possibly with an offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Moment {
    pub year: i32,
    pub month: Option<u32>,
    pub day: Option<u32>,
    pub time: Option<NaiveTime>,
    /// Offset the local fields are in; `None` for dates and zone-less timestamps.
    pub offset: Option<FixedOffset>,
}

impl Moment {
    fn from_local(local: NaiveDateTime, offset: Option<FixedOffset>) -> Self {
        Self {
            year: local.year(),
            month: Some(local.month()),
            day: Some(local.day()),
            time: Some(local.time()),
            offset,
        }
    }

    fn from_date(date: NaiveDate) -> Self {
        Self {
            year: date.year(),
            month: Some(date.month()),
            day: Some(date.day()),
            time: None,
            offset: None,
        }
    }

    /// The calendar date, when the value names a whole one.
    pub fn date(&self) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(self.year, self.month?, self.day?)
    }

    /// Local date and time; a date alone means its midnight.
    fn local(&self) -> Option<NaiveDateTime> {
        Some(self.date()?.and_time(self.time.unwrap_or(NaiveTime::MIN)))
    }

    fn offset_or_utc(&self) -> FixedOffset {
        self.offset
            .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"))
    }

    /// The instant, taking a missing offset as UTC (Athena's session zone).
    fn instant(&self) -> Option<NaiveDateTime> {
        let local = self.local()?;
        local.checked_sub_signed(TimeDelta::seconds(i64::from(
            self.offset_or_utc().local_minus_utc(),
        )))
    }

    /// Local date and time of this instant seen at `offset`.
    fn local_at(&self, offset: FixedOffset) -> Option<NaiveDateTime> {
        self.instant()?
            .checked_add_signed(TimeDelta::seconds(i64::from(offset.local_minus_utc())))
    }
}

/// Parses ISO 8601 / FHIR date text: `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, optionally followed by
/// `T` (or a space) and `hh:mm[:ss[.fff…]]`, optionally followed by `Z`, `±hh:mm`, `±hhmm`,
/// `±hh` or ` UTC`.
pub(crate) fn parse_iso(text: &str) -> Option<Moment> {
    let s = text.trim();
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u32> {
        let part = b.get(from..from + n)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    let year = i32::try_from(digits(0, 4)?).ok()?;
    let mut pos = 4;
    let mut month = None;
    let mut day = None;
    if b.get(pos) == Some(&b'-') {
        let m = digits(pos + 1, 2)?;
        if !(1..=12).contains(&m) {
            return None;
        }
        month = Some(m);
        pos += 3;
        if b.get(pos) == Some(&b'-') {
            day = Some(digits(pos + 1, 2)?);
            pos += 3;
            NaiveDate::from_ymd_opt(year, m, day?)?;
        }
    }
    let mut time = None;
    let mut offset = None;
    if matches!(b.get(pos), Some(b'T' | b't' | b' ')) && day.is_some() {
        let hour = digits(pos + 1, 2)?;
        if b.get(pos + 3) != Some(&b':') {
            return None;
        }
        let minute = digits(pos + 4, 2)?;
        pos += 6;
        let mut second = 0;
        let mut nanos = 0;
        if b.get(pos) == Some(&b':') {
            second = digits(pos + 1, 2)?;
            pos += 3;
            if b.get(pos) == Some(&b'.') {
                let start = pos + 1;
                let mut end = start;
                while b.get(end).is_some_and(u8::is_ascii_digit) {
                    end += 1;
                }
                if end == start {
                    return None;
                }
                // Keep nanosecond precision; further digits are dropped.
                let frac = &s[start..end.min(start + 9)];
                nanos = frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32);
                pos = end;
            }
        }
        // FHIR allows a leap second "60"; chrono encodes it as 59 + 1s of nanos.
        time = if second == 60 {
            NaiveTime::from_hms_nano_opt(hour, minute, 59, 1_000_000_000 + nanos)
        } else {
            NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)
        };
        time?;
        let rest = &s[pos..];
        offset = match rest {
            "" => None,
            "Z" | "z" | " UTC" | "UTC" => Some(FixedOffset::east_opt(0)?),
            _ => Some(parse_offset(rest)?),
        };
        pos = s.len();
    }
    if pos != s.len() {
        return None;
    }
    Some(Moment {
        year,
        month,
        day,
        time,
        offset,
    })
}

fn parse_offset(text: &str) -> Option<FixedOffset> {
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let body = &text[1..];
    let (h, m) = match body.len() {
        2 => (body, "00"),
        4 => (&body[..2], &body[2..]),
        5 if body.as_bytes()[2] == b':' => (&body[..2], &body[3..]),
        _ => return None,
    };
    if !(h.bytes().chain(m.bytes())).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let seconds = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
    FixedOffset::east_opt(sign * seconds)
}

/// A timestamp value: its UTC instant, its zone's offset at that instant, and its unit.
pub(crate) struct Timestamp {
    pub utc: NaiveDateTime,
    pub offset: Option<FixedOffset>,
    pub unit: TimeUnit,
}

fn to_utc(value: i64, unit: TimeUnit) -> Option<NaiveDateTime> {
    let dt = match unit {
        TimeUnit::Second => DateTime::from_timestamp(value, 0),
        TimeUnit::Millisecond => DateTime::from_timestamp_millis(value),
        TimeUnit::Microsecond => DateTime::from_timestamp_micros(value),
        TimeUnit::Nanosecond => Some(DateTime::from_timestamp_nanos(value)),
    };
    dt.map(|d| d.naive_utc())
}

fn offset_at(tz: &Tz, utc: &NaiveDateTime) -> FixedOffset {
    tz.offset_from_utc_datetime(utc).fix()
}

/// Row `row` of a timestamp array (`None` when NULL).
pub(crate) fn timestamp_at(array: &dyn Array, row: usize) -> Result<Option<Timestamp>, ArrowError> {
    let DataType::Timestamp(unit, tz) = array.data_type() else {
        return Err(ArrowError::InvalidArgumentError(format!(
            "expected a timestamp, found {}",
            array.data_type()
        )));
    };
    if array.is_null(row) {
        return Ok(None);
    }
    let value = match unit {
        TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(row),
        TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(row),
        TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row),
        TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(row),
    };
    let utc = to_utc(value, *unit)
        .ok_or_else(|| ArrowError::ComputeError(format!("timestamp {value} is out of range")))?;
    let offset = match tz {
        Some(tz) => Some(offset_at(&tz.parse::<Tz>()?, &utc)),
        None => None,
    };
    Ok(Some(Timestamp {
        utc,
        offset,
        unit: *unit,
    }))
}

fn format_offset(offset: FixedOffset) -> String {
    let secs = offset.local_minus_utc();
    if secs == 0 {
        return "Z".to_string();
    }
    let sign = if secs < 0 { '-' } else { '+' };
    let secs = secs.abs();
    format!("{sign}{:02}:{:02}", secs / 3600, secs % 3600 / 60)
}

/// Fractional seconds: milliseconds when nothing finer is set, else the unit's precision.
fn format_fraction(time: &NaiveTime, unit: TimeUnit) -> String {
    let nanos = time.nanosecond() % 1_000_000_000;
    match unit {
        TimeUnit::Second => String::new(),
        _ if nanos.is_multiple_of(1_000_000) => format!(".{:03}", nanos / 1_000_000),
        TimeUnit::Nanosecond if !nanos.is_multiple_of(1_000) => format!(".{nanos:09}"),
        _ => format!(".{:06}", nanos / 1_000),
    }
}

/// ISO 8601 text of a timestamp, as Trino's `to_iso8601`: `2019-01-01T10:00:00.000Z`, local
/// time with its offset; zone-less timestamps have no suffix.
pub(crate) fn format_timestamp_iso(ts: &Timestamp) -> String {
    let offset = ts
        .offset
        .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
    let local = ts.utc + TimeDelta::seconds(i64::from(offset.local_minus_utc()));
    let suffix = ts.offset.map(format_offset).unwrap_or_default();
    format!(
        "{}{}{suffix}",
        local.format("%Y-%m-%dT%H:%M:%S"),
        format_fraction(&local.time(), ts.unit)
    )
}

/// Trino's `varchar` text of a timestamp: `2019-01-01 10:00:00.000 UTC`.
pub(crate) fn format_timestamp_trino(ts: &Timestamp) -> String {
    let offset = ts
        .offset
        .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
    let local = ts.utc + TimeDelta::seconds(i64::from(offset.local_minus_utc()));
    let suffix = match ts.offset {
        None => String::new(),
        Some(o) if o.local_minus_utc() == 0 => " UTC".to_string(),
        Some(o) => format!(" {o}"),
    };
    format!(
        "{}{}{suffix}",
        local.format("%Y-%m-%d %H:%M:%S"),
        format_fraction(&local.time(), ts.unit)
    )
}

/// A column of dates, timestamps or date text, read row by row as [`Moment`]s.
enum Temporal {
    Date32(ArrayRef),
    Date64(ArrayRef),
    /// Timestamps normalized to microseconds, with their zone.
    Timestamp(TimestampMicrosecondArray, Option<Tz>),
    Text(ArrayRef),
    Null,
}

impl Temporal {
    fn new(function: &str, array: &ArrayRef) -> DFResult<Self> {
        Ok(match array.data_type() {
            DataType::Date32 => Self::Date32(Arc::clone(array)),
            DataType::Date64 => Self::Date64(Arc::clone(array)),
            DataType::Timestamp(_, tz) => {
                let micros = cast(
                    array,
                    &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
                )?;
                let tz = tz.as_deref().map(str::parse::<Tz>).transpose()?;
                Self::Timestamp(
                    micros.as_primitive::<TimestampMicrosecondType>().clone(),
                    tz,
                )
            }
            DataType::Null => Self::Null,
            t if is_string(t) => Self::Text(Arc::clone(array)),
            other => {
                return Err(fn_error(
                    function,
                    format!("expected a date, timestamp or ISO 8601 text, found {other}"),
                ));
            }
        })
    }

    fn get(&self, function: &str, row: usize) -> DFResult<Option<Moment>> {
        Ok(match self {
            Self::Date32(a) => a
                .as_primitive::<Date32Type>()
                .is_valid(row)
                .then(|| a.as_primitive::<Date32Type>().value_as_date(row))
                .flatten()
                .map(Moment::from_date),
            Self::Date64(a) => a
                .as_primitive::<Date64Type>()
                .is_valid(row)
                .then(|| a.as_primitive::<Date64Type>().value_as_date(row))
                .flatten()
                .map(Moment::from_date),
            Self::Timestamp(a, tz) => {
                if a.is_null(row) {
                    return Ok(None);
                }
                let utc = to_utc(a.value(row), TimeUnit::Microsecond)
                    .ok_or_else(|| fn_error(function, "timestamp out of range"))?;
                match tz {
                    Some(tz) => {
                        let offset = offset_at(tz, &utc);
                        let local = utc + TimeDelta::seconds(i64::from(offset.local_minus_utc()));
                        Some(Moment::from_local(local, Some(offset)))
                    }
                    None => Some(Moment::from_local(utc, None)),
                }
            }
            Self::Text(a) => {
                let strings = Strings::try_new(a.as_ref())
                    .ok_or_else(|| fn_error(function, "expected text"))?;
                match strings.get(row) {
                    None => None,
                    Some(text) => Some(parse_iso(text).ok_or_else(|| {
                        fn_error(
                            function,
                            format!("'{text}' is not an ISO 8601 date or date-time"),
                        )
                    })?),
                }
            }
            Self::Null => None,
        })
    }
}

fn temporal_arg_ok(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) | DataType::Null
    ) || is_string(t)
}

fn check_arg_count(function: &str, types: &[DataType], n: usize) -> DFResult<()> {
    if types.len() == n {
        Ok(())
    } else {
        Err(plan_error(
            function,
            format!("expected {n} argument(s), found {}", types.len()),
        ))
    }
}

fn check_temporal(function: &str, t: &DataType) -> DFResult<()> {
    if temporal_arg_ok(t) {
        Ok(())
    } else {
        Err(plan_error(
            function,
            format!("expected a date, timestamp or ISO 8601 text, found {t}"),
        ))
    }
}

fn check_text(function: &str, what: &str, t: &DataType) -> DFResult<()> {
    if is_string(t) || *t == DataType::Null {
        Ok(())
    } else {
        Err(plan_error(
            function,
            format!("{what} must be text, found {t}"),
        ))
    }
}

// ---------------------------------------------------------------------------------------
// year(), month(), ...
// ---------------------------------------------------------------------------------------

/// A field extracted by one of the `year()`-style functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Year,
    Quarter,
    Month,
    Week,
    YearOfWeek,
    Day,
    DayOfWeek,
    DayOfYear,
    Hour,
    Minute,
    Second,
    Millisecond,
}

impl Part {
    const ALL: [Part; 12] = [
        Part::Year,
        Part::Quarter,
        Part::Month,
        Part::Week,
        Part::YearOfWeek,
        Part::Day,
        Part::DayOfWeek,
        Part::DayOfYear,
        Part::Hour,
        Part::Minute,
        Part::Second,
        Part::Millisecond,
    ];

    fn name(self) -> &'static str {
        match self {
            Part::Year => "year",
            Part::Quarter => "quarter",
            Part::Month => "month",
            Part::Week => "week",
            Part::YearOfWeek => "year_of_week",
            Part::Day => "day",
            Part::DayOfWeek => "day_of_week",
            Part::DayOfYear => "day_of_year",
            Part::Hour => "hour",
            Part::Minute => "minute",
            Part::Second => "second",
            Part::Millisecond => "millisecond",
        }
    }

    fn aliases(self) -> &'static [&'static str] {
        match self {
            Part::Week => &["week_of_year"],
            Part::YearOfWeek => &["yow"],
            Part::Day => &["day_of_month"],
            Part::DayOfWeek => &["dow"],
            Part::DayOfYear => &["doy"],
            _ => &[],
        }
    }

    fn is_time_of_day(self) -> bool {
        matches!(
            self,
            Part::Hour | Part::Minute | Part::Second | Part::Millisecond
        )
    }

    fn extract(self, m: &Moment) -> Option<i64> {
        let date = || m.date();
        let value = match self {
            Part::Year => m.year,
            Part::Quarter => ((m.month? - 1) / 3 + 1) as i32,
            Part::Month => m.month? as i32,
            Part::Day => m.day? as i32,
            Part::Week => date()?.iso_week().week() as i32,
            Part::YearOfWeek => date()?.iso_week().year(),
            Part::DayOfWeek => date()?.weekday().number_from_monday() as i32,
            Part::DayOfYear => date()?.ordinal() as i32,
            Part::Hour => m.time?.hour() as i32,
            Part::Minute => m.time?.minute() as i32,
            Part::Second => m.time?.second() as i32,
            Part::Millisecond => (m.time?.nanosecond() % 1_000_000_000 / 1_000_000) as i32,
        };
        Some(i64::from(value))
    }
}

/// `year(x)`, `month(x)`, ...: one field of a date, timestamp or date text, as bigint.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DatePart {
    part: Part,
    aliases: Vec<String>,
    signature: Signature,
}

impl DatePart {
    pub fn new(part: Part) -> Self {
        Self {
            part,
            aliases: part.aliases().iter().map(|a| a.to_string()).collect(),
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for DatePart {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &str {
        self.part.name()
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        check_arg_count(self.name(), arg_types, 1)?;
        check_temporal(self.name(), &arg_types[0])?;
        if self.part.is_time_of_day() && matches!(arg_types[0], DataType::Date32 | DataType::Date64)
        {
            return Err(plan_error(
                self.name(),
                "a date has no time of day; pass a timestamp",
            ));
        }
        Ok(arg_types.to_vec())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let input = arrays(&args.args)?;
        let column = Temporal::new(self.name(), &input[0])?;
        let mut out = Int64Builder::with_capacity(input[0].len());
        for row in 0..input[0].len() {
            out.append_option(
                column
                    .get(self.name(), row)?
                    .and_then(|m| self.part.extract(&m)),
            );
        }
        finish(Arc::new(out.finish()), &args.args)
    }
}

// ---------------------------------------------------------------------------------------
// date()
// ---------------------------------------------------------------------------------------

fn days_since_epoch(date: NaiveDate) -> i32 {
    Date32Type::from_naive_date(date)
}

/// `date(x)`: the calendar date of a date, timestamp (in its zone) or date text.
///
/// Also backs `CAST(<varchar> AS DATE)`. Partial FHIR dates give NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DateFn {
    signature: Signature,
}

impl DateFn {
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl Default for DateFn {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for DateFn {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &str {
        "date"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        check_arg_count("date", arg_types, 1)?;
        check_temporal("date", &arg_types[0])?;
        Ok(arg_types.to_vec())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Date32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let input = arrays(&args.args)?;
        if input[0].data_type() == &DataType::Date32 {
            return finish(Arc::clone(&input[0]), &args.args);
        }
        let column = Temporal::new("date", &input[0])?;
        let mut out = Date32Builder::with_capacity(input[0].len());
        for row in 0..input[0].len() {
            out.append_option(
                column
                    .get("date", row)?
                    .and_then(|m| m.date())
                    .map(days_since_epoch),
            );
        }
        finish(Arc::new(out.finish()), &args.args)
    }
}

// ---------------------------------------------------------------------------------------
// date_diff(), date_add()
// ---------------------------------------------------------------------------------------

/// A unit of `date_diff` / `date_add`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Millisecond,
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Unit {
    /// The unit named by `text` (singular or plural, any case), or a message saying what is
    /// accepted.
    fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let singular = lower.strip_suffix('s').unwrap_or(&lower);
        Ok(match singular {
            "millisecond" => Unit::Millisecond,
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            "quarter" => Unit::Quarter,
            "year" => Unit::Year,
            _ => {
                return Err(format!(
                    "unknown unit '{text}'; expected millisecond, second, minute, hour, day, week, month, quarter or year"
                ));
            }
        })
    }

    /// Length in microseconds of a fixed-length unit.
    fn fixed_micros(self) -> Option<i64> {
        Some(match self {
            Unit::Millisecond => 1_000,
            Unit::Second => 1_000_000,
            Unit::Minute => 60_000_000,
            Unit::Hour => 3_600_000_000,
            Unit::Day => 86_400_000_000,
            Unit::Week => 604_800_000_000,
            _ => return None,
        })
    }

    /// Length in months of a calendar unit.
    fn months(self) -> Option<i64> {
        match self {
            Unit::Month => Some(1),
            Unit::Quarter => Some(3),
            Unit::Year => Some(12),
            _ => None,
        }
    }
}

fn add_months(dt: NaiveDateTime, months: i64) -> Option<NaiveDateTime> {
    let n = Months::new(u32::try_from(months.unsigned_abs()).ok()?);
    if months >= 0 {
        dt.checked_add_months(n)
    } else {
        dt.checked_sub_months(n)
    }
}

/// Whole months from `a` to `b` (both local), counting a month only once it has fully passed:
/// Jan 31 -> Feb 28 is one month, as in Trino (adding the count to `a` never overshoots `b`).
fn months_between(a: NaiveDateTime, b: NaiveDateTime) -> Option<i64> {
    let mut months =
        i64::from(b.year() - a.year()) * 12 + i64::from(b.month()) - i64::from(a.month());
    if months > 0 && add_months(a, months)? > b {
        months -= 1;
    } else if months < 0 && add_months(a, months)? < b {
        months += 1;
    }
    Some(months)
}

/// Checks a literal unit while planning, so a misspelt unit fails before any data is read.
fn check_literal_unit(function: &str, args: &ReturnFieldArgs) -> DFResult<()> {
    if let Some(Some(unit)) = args.scalar_arguments.first()
        && let Some(text) = literal_str(unit)
    {
        Unit::parse(text).map_err(|e| plan_error(function, e))?;
    }
    Ok(())
}

fn unit_arg(
    function: &str,
    args: &[ColumnarValue],
    input: &ArrayRef,
    row: usize,
) -> DFResult<Option<Unit>> {
    if let Some(text) = super::scalar_str(&args[0]) {
        return Unit::parse(text)
            .map(Some)
            .map_err(|e| fn_error(function, e));
    }
    let strings =
        Strings::try_new(input.as_ref()).ok_or_else(|| fn_error(function, "unit must be text"))?;
    strings
        .get(row)
        .map(|u| Unit::parse(u).map_err(|e| fn_error(function, e)))
        .transpose()
}

/// `date_diff(unit, a, b)`: `b - a` in whole units, as bigint.
///
/// Fixed units (millisecond … week) count elapsed time between the instants; calendar units
/// (month, quarter, year) count whole calendar months in `a`'s local time.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DateDiff {
    signature: Signature,
}

impl DateDiff {
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl Default for DateDiff {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for DateDiff {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &str {
        "date_diff"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        check_arg_count("date_diff", arg_types, 3)?;
        check_text("date_diff", "the unit", &arg_types[0])?;
        check_temporal("date_diff", &arg_types[1])?;
        check_temporal("date_diff", &arg_types[2])?;
        Ok(arg_types.to_vec())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Int64)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        check_literal_unit("date_diff", &args)?;
        Ok(Arc::new(Field::new("date_diff", DataType::Int64, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let input = arrays(&args.args)?;
        let a = Temporal::new("date_diff", &input[1])?;
        let b = Temporal::new("date_diff", &input[2])?;
        let rows = input[1].len();
        let mut out = Int64Builder::with_capacity(rows);
        for row in 0..rows {
            let (Some(unit), Some(a), Some(b)) = (
                unit_arg("date_diff", &args.args, &input[0], row)?,
                a.get("date_diff", row)?,
                b.get("date_diff", row)?,
            ) else {
                out.append_null();
                continue;
            };
            out.append_option(diff(unit, &a, &b));
        }
        finish(Arc::new(out.finish()), &args.args)
    }
}

fn diff(unit: Unit, a: &Moment, b: &Moment) -> Option<i64> {
    if let Some(micros) = unit.fixed_micros() {
        let elapsed = (b.instant()? - a.instant()?).num_microseconds()?;
        return Some(elapsed / micros);
    }
    let months = months_between(a.local()?, b.local_at(a.offset_or_utc())?)?;
    Some(months / unit.months()?)
}

/// `date_add(unit, n, x)`: `x` moved by `n` units; a date stays a date, a timestamp a
/// timestamp (in microseconds, same zone). Month arithmetic clamps to the month's end
/// (Jan 31 + 1 month = Feb 28/29) and is done in the timestamp's local time.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DateAdd {
    signature: Signature,
}

impl DateAdd {
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl Default for DateAdd {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for DateAdd {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &str {
        "date_add"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        check_arg_count("date_add", arg_types, 3)?;
        check_text("date_add", "the unit", &arg_types[0])?;
        if !(arg_types[1].is_integer() || arg_types[1] == DataType::Null) {
            return Err(plan_error(
                "date_add",
                format!("the amount must be an integer, found {}", arg_types[1]),
            ));
        }
        let target = match &arg_types[2] {
            DataType::Date32 | DataType::Date64 | DataType::Null => DataType::Date32,
            DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
            other => {
                return Err(plan_error(
                    "date_add",
                    format!(
                        "the value must be a date or timestamp, found {other}; convert text with date(x) or from_iso8601_timestamp(x)"
                    ),
                ));
            }
        };
        Ok(vec![arg_types[0].clone(), DataType::Int64, target])
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(match arg_types.get(2) {
            Some(DataType::Timestamp(_, tz)) => {
                DataType::Timestamp(TimeUnit::Microsecond, tz.clone())
            }
            _ => DataType::Date32,
        })
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        check_literal_unit("date_add", &args)?;
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(Arc::new(Field::new(
            "date_add",
            self.return_type(&types)?,
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let input = arrays(&args.args)?;
        let amounts = input[1].as_primitive::<arrow::datatypes::Int64Type>();
        let rows = input[2].len();
        let result: ArrayRef = match input[2].data_type() {
            DataType::Date32 => {
                let dates = input[2].as_primitive::<Date32Type>();
                let mut out = Date32Builder::with_capacity(rows);
                for row in 0..rows {
                    if dates.is_null(row) || amounts.is_null(row) {
                        out.append_null();
                        continue;
                    }
                    let Some(unit) = unit_arg("date_add", &args.args, &input[0], row)? else {
                        out.append_null();
                        continue;
                    };
                    let n = amounts.value(row);
                    let date = dates
                        .value_as_date(row)
                        .ok_or_else(|| fn_error("date_add", "date out of range"))?;
                    let moved = match unit {
                        Unit::Day => date.checked_add_signed(TimeDelta::try_days(n).ok_or_else(
                            || fn_error("date_add", "amount out of range"),
                        )?),
                        Unit::Week => date.checked_add_signed(
                            TimeDelta::try_weeks(n)
                                .ok_or_else(|| fn_error("date_add", "amount out of range"))?,
                        ),
                        u => match u.months() {
                            Some(m) => add_months(date.and_time(NaiveTime::MIN), n.saturating_mul(m))
                                .map(|d| d.date()),
                            None => {
                                return Err(fn_error(
                                    "date_add",
                                    format!("a date cannot be moved by {u:?} units; pass a timestamp")
                                        .to_lowercase(),
                                ));
                            }
                        },
                    }
                    .ok_or_else(|| fn_error("date_add", "result out of range"))?;
                    out.append_value(days_since_epoch(moved));
                }
                Arc::new(out.finish())
            }
            DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                let values = input[2].as_primitive::<TimestampMicrosecondType>();
                let zone = tz.as_deref().map(str::parse::<Tz>).transpose()?;
                let mut out = Vec::with_capacity(rows);
                for row in 0..rows {
                    if values.is_null(row) || amounts.is_null(row) {
                        out.push(None);
                        continue;
                    }
                    let Some(unit) = unit_arg("date_add", &args.args, &input[0], row)? else {
                        out.push(None);
                        continue;
                    };
                    let n = amounts.value(row);
                    let value = values.value(row);
                    let moved = match (unit.fixed_micros(), unit.months()) {
                        (Some(micros), _) => {
                            n.checked_mul(micros).and_then(|d| value.checked_add(d))
                        }
                        (None, Some(months)) => {
                            add_months_to_micros(value, n.saturating_mul(months), zone.as_ref())
                        }
                        (None, None) => None,
                    };
                    out.push(Some(
                        moved.ok_or_else(|| fn_error("date_add", "result out of range"))?,
                    ));
                }
                Arc::new(TimestampMicrosecondArray::from(out).with_timezone_opt(tz.clone()))
            }
            other => {
                return Err(fn_error(
                    "date_add",
                    format!("the value must be a date or timestamp, found {other}"),
                ));
            }
        };
        finish(result, &args.args)
    }
}

fn add_months_to_micros(value: i64, months: i64, zone: Option<&Tz>) -> Option<i64> {
    let utc = to_utc(value, TimeUnit::Microsecond)?;
    let offset = zone
        .map(|z| offset_at(z, &utc).local_minus_utc())
        .unwrap_or(0);
    let local = utc + TimeDelta::seconds(i64::from(offset));
    let moved = add_months(local, months)?;
    // Keep the offset of the original instant; a DST change in between shifts the wall time.
    let moved_utc = moved - TimeDelta::seconds(i64::from(offset));
    Some(moved_utc.and_utc().timestamp_micros())
}

// ---------------------------------------------------------------------------------------
// from_iso8601_timestamp(), from_iso8601_date(), to_iso8601()
// ---------------------------------------------------------------------------------------

/// `from_iso8601_timestamp(text)` (timestamp in UTC, microseconds; text without an offset is
/// UTC, partial dates mean their first instant) and `from_iso8601_date(text)` (`YYYY`,
/// `YYYY-MM` or `YYYY-MM-DD`; partial dates mean their first day).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FromIso8601 {
    date: bool,
    signature: Signature,
}

impl FromIso8601 {
    pub fn new(date: bool) -> Self {
        Self {
            date,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for FromIso8601 {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &str {
        if self.date {
            "from_iso8601_date"
        } else {
            "from_iso8601_timestamp"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        check_arg_count(self.name(), arg_types, 1)?;
        check_text(self.name(), "the argument", &arg_types[0])?;
        Ok(arg_types.to_vec())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(if self.date {
            DataType::Date32
        } else {
            DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let input = arrays(&args.args)?;
        let rows = input[0].len();
        let strings = Strings::try_new(input[0].as_ref());
        let mut moments = Vec::with_capacity(rows);
        for row in 0..rows {
            let Some(text) = strings.and_then(|s| s.get(row)) else {
                moments.push(None);
                continue;
            };
            let parsed = parse_iso(text).filter(|m| !self.date || m.time.is_none());
            let kind = if self.date { "date" } else { "timestamp" };
            let m = parsed.ok_or_else(|| {
                fn_error(self.name(), format!("'{text}' is not an ISO 8601 {kind}"))
            })?;
            // Partial dates mean their first day.
            moments.push(Some(Moment {
                month: Some(m.month.unwrap_or(1)),
                day: Some(m.day.unwrap_or(1)),
                ..m
            }));
        }
        let result: ArrayRef = if self.date {
            Arc::new(Date32Array::from(
                moments
                    .iter()
                    .map(|m| m.and_then(|m| m.date()).map(days_since_epoch))
                    .collect::<Vec<_>>(),
            ))
        } else {
            let mut micros = Vec::with_capacity(rows);
            for m in &moments {
                micros.push(match m {
                    None => None,
                    Some(m) => Some(
                        m.instant()
                            .map(|i| i.and_utc().timestamp_micros())
                            .ok_or_else(|| fn_error(self.name(), "timestamp out of range"))?,
                    ),
                });
            }
            Arc::new(TimestampMicrosecondArray::from(micros).with_timezone(UTC))
        };
        finish(result, &args.args)
    }
}

/// `to_iso8601(x)`: ISO 8601 text of a date (`2019-01-01`) or timestamp
/// (`2019-01-01T10:00:00.000Z`, local time with its offset).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToIso8601 {
    signature: Signature,
}

impl ToIso8601 {
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl Default for ToIso8601 {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for ToIso8601 {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &str {
        "to_iso8601"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        check_arg_count("to_iso8601", arg_types, 1)?;
        match &arg_types[0] {
            DataType::Date32 | DataType::Timestamp(..) | DataType::Null => Ok(arg_types.to_vec()),
            DataType::Date64 => Ok(vec![DataType::Date32]),
            other => Err(plan_error(
                "to_iso8601",
                format!("expected a date or timestamp, found {other}"),
            )),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let input = arrays(&args.args)?;
        let array = &input[0];
        let mut out = StringBuilder::with_capacity(array.len(), array.len() * 24);
        for row in 0..array.len() {
            match array.data_type() {
                DataType::Date32 => out.append_option(
                    array
                        .as_primitive::<Date32Type>()
                        .is_valid(row)
                        .then(|| array.as_primitive::<Date32Type>().value_as_date(row))
                        .flatten()
                        .map(|d| d.format("%Y-%m-%d").to_string()),
                ),
                DataType::Timestamp(..) => out.append_option(
                    timestamp_at(array.as_ref(), row)?.map(|t| format_timestamp_iso(&t)),
                ),
                _ => out.append_null(),
            }
        }
        finish(Arc::new(out.finish()), &args.args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moment(s: &str) -> Moment {
        parse_iso(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn parses_fhir_dates_and_datetimes() {
        let m = moment("1956-08-03");
        assert_eq!(
            (m.year, m.month, m.day, m.time),
            (1956, Some(8), Some(3), None)
        );
        let m = moment("1980");
        assert_eq!((m.year, m.month, m.day), (1980, None, None));
        assert_eq!(moment("1980-05").month, Some(5));
        let m = moment("2011-10-14T23:37:54.530-05:00");
        assert_eq!(m.time, NaiveTime::from_hms_milli_opt(23, 37, 54, 530));
        assert_eq!(m.offset, FixedOffset::west_opt(5 * 3600));
        assert_eq!(
            m.instant(),
            NaiveDate::from_ymd_opt(2011, 10, 15)
                .unwrap()
                .and_hms_milli_opt(4, 37, 54, 530)
        );
        assert_eq!(
            moment("2011-10-14 23:37:54 UTC").offset,
            FixedOffset::east_opt(0)
        );
        assert_eq!(
            moment("2011-10-14T23:37Z").time,
            NaiveTime::from_hms_opt(23, 37, 0)
        );
        for bad in [
            "",
            "19",
            "1980-13",
            "1980-02-30",
            "1980-01-01T25:00",
            "1980-01-01X",
            "abcd",
            "2011-10-14T23:37:54+5",
        ] {
            assert!(parse_iso(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn parts_follow_trino() {
        let m = moment("2021-01-03T10:20:30.456+02:00");
        let get = |p: Part| p.extract(&m);
        assert_eq!(get(Part::Year), Some(2021));
        assert_eq!(get(Part::Quarter), Some(1));
        assert_eq!(get(Part::DayOfWeek), Some(7)); // Sunday
        assert_eq!(get(Part::Week), Some(53)); // ISO week of 2020
        assert_eq!(get(Part::YearOfWeek), Some(2020));
        assert_eq!(get(Part::DayOfYear), Some(3));
        assert_eq!(get(Part::Hour), Some(10));
        assert_eq!(get(Part::Millisecond), Some(456));
        assert_eq!(Part::Month.extract(&moment("1980")), None);
    }

    #[test]
    fn month_differences_count_whole_months() {
        let d = |s: &str| moment(s);
        assert_eq!(
            diff(Unit::Year, &d("2000-05-10"), &d("2020-05-09")),
            Some(19)
        );
        assert_eq!(
            diff(Unit::Year, &d("2000-05-10"), &d("2020-05-10")),
            Some(20)
        );
        assert_eq!(
            diff(Unit::Month, &d("2020-01-31"), &d("2020-02-29")),
            Some(1)
        );
        assert_eq!(
            diff(Unit::Month, &d("2020-03-31"), &d("2020-02-29")),
            Some(-1)
        );
        assert_eq!(
            diff(Unit::Year, &d("2020-05-10"), &d("2000-05-11")),
            Some(-19)
        );
        assert_eq!(
            diff(Unit::Day, &d("2020-01-01"), &d("2020-03-01")),
            Some(60)
        );
        assert_eq!(
            diff(
                Unit::Hour,
                &d("2020-01-01T00:00:00+00:00"),
                &d("2020-01-01T05:30:00+02:00")
            ),
            Some(3)
        );
    }

    #[test]
    fn timestamps_render_like_trino() {
        let ts = Timestamp {
            utc: NaiveDate::from_ymd_opt(2019, 1, 1)
                .unwrap()
                .and_hms_opt(10, 0, 0)
                .unwrap(),
            offset: FixedOffset::east_opt(0),
            unit: TimeUnit::Microsecond,
        };
        assert_eq!(format_timestamp_iso(&ts), "2019-01-01T10:00:00.000Z");
        assert_eq!(format_timestamp_trino(&ts), "2019-01-01 10:00:00.000 UTC");
        let ts = Timestamp {
            offset: FixedOffset::west_opt(5 * 3600),
            ..ts
        };
        assert_eq!(format_timestamp_iso(&ts), "2019-01-01T05:00:00.000-05:00");
    }
}
