//! Trino's JSON functions over JSON text.
//!
//! HealthLake stores `extension` and `modifierextension` as `array<string>` of JSON objects and
//! the guide reads them with `json_extract(extension[1], '$.valueString')`. Athena has a JSON
//! type; here a JSON value is `varchar` holding JSON text, so:
//!
//! * `json_extract(json, path)` returns the selected value as JSON text (a string keeps its
//!   quotes: `"Aiko Jacobs"`), NULL when the path selects nothing or the value is JSON null.
//! * `json_extract_scalar(json, path)` returns a scalar as plain text (`Aiko Jacobs`), NULL for
//!   objects, arrays and null.
//! * `json_array_length(json)`, `json_size(json, path)` count elements.
//! * `json_parse(text)` validates and compacts JSON text (an error if it is not JSON);
//!   `json_format(json)` compacts it.
//!
//! Text that is not valid JSON gives NULL in the extraction functions, as in Trino. Besides
//! text, the first argument may be a struct, array or other column, which is first rendered as
//! JSON (so `json_extract(valuequantity, '$.value')` works).
//!
//! Paths are Trino's JsonPath subset: `$`, `.key`, `["key"]`, `['key']`, `[n]` (0-based).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::Result as DFResult;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use serde_json::Value;

use super::to_json::value_at;
use super::{Strings, arrays, finish, fn_error, is_string, literal_str, plan_error, scalar_str};

/// Every SQL-callable JSON function.
pub fn udfs() -> Vec<Arc<ScalarUDF>> {
    [
        JsonFn::Extract,
        JsonFn::ExtractScalar,
        JsonFn::ArrayLength,
        JsonFn::Size,
        JsonFn::Parse,
        JsonFn::Format,
    ]
    .into_iter()
    .map(|f| Arc::new(ScalarUDF::new_from_impl(JsonUdf::new(f))))
    .collect()
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

/// A compiled JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonPath(Vec<Step>);

impl JsonPath {
    /// Compiles Trino's JsonPath subset; the error says what is wrong and where.
    pub fn parse(path: &str) -> Result<Self, String> {
        let chars: Vec<char> = path.trim().chars().collect();
        let invalid = |at: usize, what: &str| format!("invalid JSON path '{path}': {what} at {at}");
        if chars.first() != Some(&'$') {
            return Err(invalid(0, "expected '$'"));
        }
        let mut steps = Vec::new();
        let mut i = 1;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < chars.len() && chars[end] != '.' && chars[end] != '[' {
                        end += 1;
                    }
                    if end == start {
                        return Err(invalid(start, "expected a key"));
                    }
                    let key: String = chars[start..end].iter().collect();
                    if key == "*" {
                        return Err(invalid(start, "wildcards are not supported"));
                    }
                    steps.push(Step::Key(key));
                    i = end;
                }
                '[' => {
                    let start = i + 1;
                    match chars.get(start) {
                        Some(&q @ ('"' | '\'')) => {
                            let mut key = String::new();
                            let mut j = start + 1;
                            loop {
                                match chars.get(j) {
                                    None => return Err(invalid(j, "unterminated key")),
                                    Some('\\') => {
                                        let escaped = chars
                                            .get(j + 1)
                                            .ok_or_else(|| invalid(j, "unterminated escape"))?;
                                        key.push(*escaped);
                                        j += 2;
                                    }
                                    Some(c) if *c == q => break,
                                    Some(c) => {
                                        key.push(*c);
                                        j += 1;
                                    }
                                }
                            }
                            if chars.get(j + 1) != Some(&']') {
                                return Err(invalid(j + 1, "expected ']'"));
                            }
                            steps.push(Step::Key(key));
                            i = j + 2;
                        }
                        Some(c) if c.is_ascii_digit() => {
                            let mut j = start;
                            while chars.get(j).is_some_and(char::is_ascii_digit) {
                                j += 1;
                            }
                            if chars.get(j) != Some(&']') {
                                return Err(invalid(j, "expected ']'"));
                            }
                            let digits: String = chars[start..j].iter().collect();
                            let index = digits
                                .parse()
                                .map_err(|_| invalid(start, "index too large"))?;
                            steps.push(Step::Index(index));
                            i = j + 1;
                        }
                        Some('*') => return Err(invalid(start, "wildcards are not supported")),
                        _ => return Err(invalid(start, "expected an index or a quoted key")),
                    }
                }
                _ => return Err(invalid(i, "expected '.' or '['")),
            }
        }
        Ok(Self(steps))
    }

    /// The value the path selects in `value`, if any.
    pub fn select<'v>(&self, mut value: &'v Value) -> Option<&'v Value> {
        for step in &self.0 {
            value = match (step, value) {
                (Step::Key(k), Value::Object(map)) => map.get(k)?,
                (Step::Index(i), Value::Array(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(value)
    }
}

/// The SQL-callable JSON functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JsonFn {
    Extract,
    ExtractScalar,
    ArrayLength,
    Size,
    Parse,
    Format,
}

impl JsonFn {
    fn name(self) -> &'static str {
        match self {
            JsonFn::Extract => "json_extract",
            JsonFn::ExtractScalar => "json_extract_scalar",
            JsonFn::ArrayLength => "json_array_length",
            JsonFn::Size => "json_size",
            JsonFn::Parse => "json_parse",
            JsonFn::Format => "json_format",
        }
    }

    fn takes_path(self) -> bool {
        matches!(self, JsonFn::Extract | JsonFn::ExtractScalar | JsonFn::Size)
    }

    fn return_type(self) -> DataType {
        match self {
            JsonFn::ArrayLength | JsonFn::Size => DataType::Int64,
            _ => DataType::Utf8,
        }
    }
}

/// Implementation of every [`JsonFn`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct JsonUdf {
    function: JsonFn,
    signature: Signature,
}

impl JsonUdf {
    pub fn new(function: JsonFn) -> Self {
        Self {
            function,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// Row-wise access to the JSON argument: text parsed as JSON, anything else rendered.
enum JsonInput<'a> {
    Text(Strings<'a>),
    Arrow(&'a dyn Array),
}

impl JsonInput<'_> {
    /// The JSON value of `row`: `Ok(None)` for NULL, `Err(())` for text that is not JSON.
    fn get(&self, row: usize) -> DFResult<Option<Result<Value, ()>>> {
        match self {
            JsonInput::Text(s) => Ok(s.get(row).map(|t| serde_json::from_str(t).map_err(|_| ()))),
            JsonInput::Arrow(a) => {
                if a.is_null(row) {
                    return Ok(None);
                }
                Ok(Some(Ok(value_at(*a, row)?)))
            }
        }
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

impl ScalarUDFImpl for JsonUdf {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &str {
        self.function.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        let expected = if self.function.takes_path() { 2 } else { 1 };
        if arg_types.len() != expected {
            return Err(plan_error(
                self.name(),
                format!("expected {expected} argument(s), found {}", arg_types.len()),
            ));
        }
        let mut types = arg_types.to_vec();
        if types[0] == DataType::Null {
            types[0] = DataType::Utf8;
        }
        if matches!(self.function, JsonFn::Parse) && !is_string(&types[0]) {
            return Err(plan_error(
                self.name(),
                format!("expected text, found {}", types[0]),
            ));
        }
        if expected == 2 {
            if !(is_string(&types[1]) || types[1] == DataType::Null) {
                return Err(plan_error(
                    self.name(),
                    format!("the JSON path must be text, found {}", types[1]),
                ));
            }
            if types[1] == DataType::Null {
                types[1] = DataType::Utf8;
            }
        }
        Ok(types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(self.function.return_type())
    }

    /// Checks a literal path while planning, so a bad path fails before any data is read.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        if self.function.takes_path()
            && let Some(Some(path)) = args.scalar_arguments.get(1)
            && let Some(path) = literal_str(path)
        {
            JsonPath::parse(path).map_err(|e| plan_error(self.name(), e))?;
        }
        Ok(Arc::new(Field::new(
            self.name(),
            self.function.return_type(),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let name = self.name();
        let input = arrays(&args.args)?;
        let rows = input[0].len();
        let json = match Strings::try_new(input[0].as_ref()) {
            Some(s) => JsonInput::Text(s),
            None => JsonInput::Arrow(input[0].as_ref()),
        };
        // The path is nearly always a literal: compile it once.
        let fixed_path = match args.args.get(1) {
            Some(ColumnarValue::Scalar(_)) => match scalar_str(&args.args[1]) {
                Some(p) => Some(Some(JsonPath::parse(p).map_err(|e| fn_error(name, e))?)),
                None => Some(None),
            },
            _ => None,
        };
        let path_strings = input.get(1).and_then(|p| Strings::try_new(p.as_ref()));
        let path_at = |row: usize| -> DFResult<Option<JsonPath>> {
            match (&fixed_path, &path_strings) {
                (Some(p), _) => Ok(p.clone()),
                (None, Some(s)) => s
                    .get(row)
                    .map(|p| JsonPath::parse(p).map_err(|e| fn_error(name, e)))
                    .transpose(),
                (None, None) => Ok(Some(JsonPath(Vec::new()))),
            }
        };

        let result: ArrayRef = match self.function {
            JsonFn::Extract | JsonFn::ExtractScalar | JsonFn::Format => {
                let mut out = StringBuilder::with_capacity(rows, rows * 16);
                for row in 0..rows {
                    let value = match json.get(row)? {
                        None => None,
                        Some(Ok(v)) => Some(v),
                        Some(Err(())) if self.function == JsonFn::Format => {
                            return Err(fn_error(name, "the argument is not valid JSON"));
                        }
                        Some(Err(())) => None,
                    };
                    let Some(value) = value else {
                        out.append_null();
                        continue;
                    };
                    let text = match self.function {
                        JsonFn::Format => Some(value.to_string()),
                        _ => {
                            let Some(path) = path_at(row)? else {
                                out.append_null();
                                continue;
                            };
                            match path.select(&value) {
                                None | Some(Value::Null) => None,
                                Some(v) if self.function == JsonFn::Extract => Some(v.to_string()),
                                Some(v) => scalar_text(v),
                            }
                        }
                    };
                    out.append_option(text);
                }
                Arc::new(out.finish())
            }
            JsonFn::ArrayLength | JsonFn::Size => {
                let mut out = Int64Builder::with_capacity(rows);
                for row in 0..rows {
                    let Some(Ok(value)) = json.get(row)? else {
                        out.append_null();
                        continue;
                    };
                    let selected = match self.function {
                        JsonFn::Size => match path_at(row)? {
                            Some(path) => path.select(&value).cloned(),
                            None => None,
                        },
                        _ => Some(value),
                    };
                    let count = match (self.function, selected) {
                        (_, Some(Value::Array(items))) => Some(items.len()),
                        (JsonFn::Size, Some(Value::Object(map))) => Some(map.len()),
                        (JsonFn::Size, Some(_)) => Some(0),
                        _ => None,
                    };
                    out.append_option(count.map(|c| c as i64));
                }
                Arc::new(out.finish())
            }
            JsonFn::Parse => {
                let strings = Strings::try_new(input[0].as_ref())
                    .ok_or_else(|| fn_error(name, "expected text"))?;
                let mut out = StringBuilder::with_capacity(rows, rows * 16);
                for row in 0..rows {
                    match strings.get(row) {
                        None => out.append_null(),
                        Some(text) => {
                            let value: Value = serde_json::from_str(text).map_err(|e| {
                                fn_error(name, format!("cannot convert '{text}' to JSON: {e}"))
                            })?;
                            out.append_value(value.to_string());
                        }
                    }
                }
                Arc::new(out.finish())
            }
        };
        finish(result, &args.args)
    }
}

// ---------------------------------------------------------------------------------------
// CAST(<json> AS ...)
// ---------------------------------------------------------------------------------------

/// Target of a cast from JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JsonCastTarget {
    Bigint,
    Double,
    Boolean,
    Varchar,
}

/// The conversion function for `CAST(<json> AS target)`, when Trino's JSON cast differs from
/// casting the JSON text (numbers, booleans, text); `None` leaves the cast alone.
pub(crate) fn cast_udf_for(target: &DataType) -> Option<Arc<ScalarUDF>> {
    let target = match target {
        t if t.is_integer() => JsonCastTarget::Bigint,
        t if t.is_floating()
            || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) =>
        {
            JsonCastTarget::Double
        }
        DataType::Boolean => JsonCastTarget::Boolean,
        t if is_string(t) => JsonCastTarget::Varchar,
        _ => return None,
    };
    Some(Arc::new(ScalarUDF::new_from_impl(JsonCast::new(target))))
}

/// Trino's cast from a JSON value: numbers to integers round half away from zero, JSON
/// strings convert by their content, booleans are 1/0, JSON null is NULL; objects and arrays
/// cannot be cast to a scalar type (an error, as in Trino).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct JsonCast {
    target: JsonCastTarget,
    signature: Signature,
}

impl JsonCast {
    pub fn new(target: JsonCastTarget) -> Self {
        Self {
            target,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn target_name(&self) -> &'static str {
        match self.target {
            JsonCastTarget::Bigint => "bigint",
            JsonCastTarget::Double => "double",
            JsonCastTarget::Boolean => "boolean",
            JsonCastTarget::Varchar => "varchar",
        }
    }

    fn cannot(&self, value: &Value) -> datafusion::error::DataFusionError {
        let kind = match value {
            Value::Object(_) => "a JSON object".to_string(),
            Value::Array(_) => "a JSON array".to_string(),
            other => format!("JSON {other}"),
        };
        fn_error(
            "CAST",
            format!("cannot cast {kind} to {}", self.target_name()),
        )
    }
}

fn round_to_i64(v: f64) -> Option<i64> {
    let r = v.round();
    // i64::MAX is not exactly representable; the bound is 2^63.
    (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0)
        .contains(&r)
        .then_some(r as i64)
}

impl ScalarUDFImpl for JsonCast {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &str {
        match self.target {
            JsonCastTarget::Bigint => "json_cast_bigint",
            JsonCastTarget::Double => "json_cast_double",
            JsonCastTarget::Boolean => "json_cast_boolean",
            JsonCastTarget::Varchar => "json_cast_varchar",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        if arg_types.len() != 1 || !(is_string(&arg_types[0]) || arg_types[0] == DataType::Null) {
            return Err(plan_error(self.name(), "expected one JSON text argument"));
        }
        Ok(vec![DataType::Utf8])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(match self.target {
            JsonCastTarget::Bigint => DataType::Int64,
            JsonCastTarget::Double => DataType::Float64,
            JsonCastTarget::Boolean => DataType::Boolean,
            JsonCastTarget::Varchar => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let input = arrays(&args.args)?;
        let strings = Strings::try_new(input[0].as_ref())
            .ok_or_else(|| fn_error("CAST", "expected JSON text"))?;
        let rows = input[0].len();
        let mut values = Vec::with_capacity(rows);
        for row in 0..rows {
            values.push(match strings.get(row) {
                None => None,
                Some(text) => match serde_json::from_str::<Value>(text) {
                    Ok(Value::Null) => None,
                    Ok(v) => Some(v),
                    Err(e) => return Err(fn_error("CAST", format!("'{text}' is not JSON: {e}"))),
                },
            });
        }
        let invalid = |v: &Value, s: &str| {
            fn_error(
                "CAST",
                format!("cannot cast '{s}' from {v} to {}", self.target_name()),
            )
        };
        let result: ArrayRef = match self.target {
            JsonCastTarget::Bigint => {
                let mut out = Int64Builder::with_capacity(rows);
                for v in &values {
                    out.append_option(match v {
                        None => None,
                        Some(Value::Number(n)) => Some(match n.as_i64() {
                            Some(i) => i,
                            None => n.as_f64().and_then(round_to_i64).ok_or_else(|| {
                                invalid(v.as_ref().unwrap_or(&Value::Null), &n.to_string())
                            })?,
                        }),
                        Some(Value::String(s)) => Some(
                            s.trim()
                                .parse::<i64>()
                                .ok()
                                .or_else(|| s.trim().parse::<f64>().ok().and_then(round_to_i64))
                                .ok_or_else(|| invalid(&Value::String(s.clone()), s))?,
                        ),
                        Some(Value::Bool(b)) => Some(i64::from(*b)),
                        Some(other) => return Err(self.cannot(other)),
                    });
                }
                Arc::new(out.finish())
            }
            JsonCastTarget::Double => {
                let mut out = Float64Builder::with_capacity(rows);
                for v in &values {
                    out.append_option(match v {
                        None => None,
                        Some(Value::Number(n)) => n.as_f64(),
                        Some(Value::String(s)) => Some(
                            s.trim()
                                .parse::<f64>()
                                .map_err(|_| invalid(&Value::String(s.clone()), s))?,
                        ),
                        Some(Value::Bool(b)) => Some(if *b { 1.0 } else { 0.0 }),
                        Some(other) => return Err(self.cannot(other)),
                    });
                }
                Arc::new(out.finish())
            }
            JsonCastTarget::Boolean => {
                let mut out = BooleanBuilder::with_capacity(rows);
                for v in &values {
                    out.append_option(match v {
                        None => None,
                        Some(Value::Bool(b)) => Some(*b),
                        Some(Value::Number(n)) => Some(n.as_f64().is_some_and(|f| f != 0.0)),
                        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                            "true" => Some(true),
                            "false" => Some(false),
                            _ => return Err(invalid(&Value::String(s.clone()), s)),
                        },
                        Some(other) => return Err(self.cannot(other)),
                    });
                }
                Arc::new(out.finish())
            }
            JsonCastTarget::Varchar => {
                let mut out = StringBuilder::with_capacity(rows, rows * 16);
                for v in &values {
                    match v {
                        None => out.append_null(),
                        Some(v @ (Value::Object(_) | Value::Array(_))) => {
                            return Err(self.cannot(v));
                        }
                        Some(v) => out.append_option(scalar_text(v)),
                    }
                }
                Arc::new(out.finish())
            }
        };
        finish(result, &args.args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_follow_trinos_subset() {
        let doc = json!({"a": {"b c": [10, {"d": "x"}]}, "e.f": 1});
        let sel = |p: &str| JsonPath::parse(p).unwrap().select(&doc).cloned();
        assert_eq!(sel("$"), Some(doc.clone()));
        assert_eq!(sel("$.a[\"b c\"][0]"), Some(json!(10)));
        assert_eq!(sel("$.a['b c'][1].d"), Some(json!("x")));
        assert_eq!(sel("$[\"e.f\"]"), Some(json!(1)));
        assert_eq!(sel("$.a.missing"), None);
        assert_eq!(sel("$.a[0]"), None);
        for bad in ["a.b", "$.", "$[", "$[1", "$.a[*]", "$..a", "$['x"] {
            let err = JsonPath::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn rounding_matches_trino() {
        assert_eq!(round_to_i64(0.5), Some(1));
        assert_eq!(round_to_i64(-0.5), Some(-1));
        assert_eq!(round_to_i64(2.4), Some(2));
        assert_eq!(round_to_i64(f64::NAN), None);
        assert_eq!(round_to_i64(1e19), None);
    }
}
