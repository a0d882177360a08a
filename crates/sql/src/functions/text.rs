//! Trino text semantics: `concat` and the `varchar` rendering of casts.
//!
//! * `concat(a, b, ...)` is NULL when any argument is NULL (DataFusion's `concat` skips
//!   NULLs, as PostgreSQL does). The guide's `CONCAT(name[1].family, ' ', name[1].given[1])`
//!   therefore is NULL for a patient without a name, as in Athena.
//! * `CAST(<double> AS VARCHAR)` prints doubles as Java's `Double.toString` does, which is what
//!   Presto and Athena engine 2 print and what reads naturally: `1.5`, `72.0`, `0.001`, and
//!   scientific notation outside [10^-3, 10^7): `1.0E7`, `1.234E-5`. (Trino since version 371
//!   prints every double in scientific notation, `1.5E0`; for FHIR quantities in reports the
//!   plain form is the useful one, so it was chosen deliberately.) `real` prints the same way.
//! * `CAST(<struct|array|map> AS VARCHAR)` prints compact JSON with NULL fields left out
//!   (`{"value":72.0,"unit":"kg"}` style, lower-case names); Trino has no such cast.
//! * `CAST(<timestamp> AS VARCHAR)` prints Trino's form, `2019-01-01 10:00:00.000 UTC`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::compute::kernels::cast::{can_cast_types, cast};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::common::Result as DFResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::datetime::{format_timestamp_trino, timestamp_at};
use super::to_json::value_at;
use super::{arrays, finish, fn_error, plan_error};

/// Every SQL-callable text function.
pub fn udfs() -> Vec<Arc<ScalarUDF>> {
    vec![Arc::new(ScalarUDF::new_from_impl(Concat::new()))]
}

/// The function rendering a value as Trino's `CAST(x AS VARCHAR)` does (not SQL-callable).
pub fn trino_varchar_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(TrinoVarchar::new()))
}

/// True when `CAST(<source> AS VARCHAR)` must render through [`trino_varchar_udf`] rather
/// than Arrow's cast.
pub fn needs_trino_varchar(source: &DataType) -> bool {
    matches!(
        source,
        DataType::Float64
            | DataType::Float32
            | DataType::Float16
            | DataType::Struct(_)
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(..)
            | DataType::Map(..)
            | DataType::Timestamp(..)
    )
}

/// Formats a double from its shortest round-trip scientific form (`{:e}`) the way Java's
/// `Double.toString` does; see the module docs.
fn java_style(sci: &str, negative: bool, plain: bool) -> String {
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    if plain {
        let (int, frac) = if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                (
                    format!("{digits}{}", "0".repeat(int_len - digits.len())),
                    "0".to_string(),
                )
            } else {
                (digits[..int_len].to_string(), digits[int_len..].to_string())
            }
        } else {
            (
                "0".to_string(),
                format!("{}{digits}", "0".repeat((-exp - 1) as usize)),
            )
        };
        format!("{sign}{int}.{frac}")
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let rest = if rest.is_empty() { "0" } else { rest };
        format!("{sign}{first}.{rest}E{exp}")
    }
}

/// A double as Trino's `varchar` cast prints it in this engine; see the module docs.
pub fn format_double(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let abs = v.abs();
    java_style(&format!("{abs:e}"), v < 0.0, (1e-3..1e7).contains(&abs))
}

/// A real (32-bit float) printed like [`format_double`], with its own shortest digits.
pub fn format_real(v: f32) -> String {
    if !v.is_finite() || v == 0.0 {
        return format_double(f64::from(v));
    }
    let abs = v.abs();
    java_style(&format!("{abs:e}"), v < 0.0, (1e-3..1e7).contains(&abs))
}

/// Renders any value as Trino's `CAST(x AS VARCHAR)` does here; see the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TrinoVarchar {
    signature: Signature,
}

impl TrinoVarchar {
    pub fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl Default for TrinoVarchar {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for TrinoVarchar {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &str {
        "trino_varchar"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let input = arrays(&args.args)?;
        let array = &input[0];
        let rows = array.len();
        let result: ArrayRef = match array.data_type() {
            DataType::Float64 => {
                let values = array.as_primitive::<Float64Type>();
                Arc::new(
                    values
                        .iter()
                        .map(|v| v.map(format_double))
                        .collect::<arrow::array::StringArray>(),
                )
            }
            DataType::Float32 => {
                let values = array.as_primitive::<Float32Type>();
                Arc::new(
                    values
                        .iter()
                        .map(|v| v.map(format_real))
                        .collect::<arrow::array::StringArray>(),
                )
            }
            DataType::Float16 => {
                let doubles = cast(array, &DataType::Float64)?;
                let values = doubles.as_primitive::<Float64Type>();
                Arc::new(
                    values
                        .iter()
                        .map(|v| v.map(format_double))
                        .collect::<arrow::array::StringArray>(),
                )
            }
            DataType::Timestamp(..) => {
                let mut out = StringBuilder::with_capacity(rows, rows * 28);
                for row in 0..rows {
                    out.append_option(
                        timestamp_at(array.as_ref(), row)?.map(|t| format_timestamp_trino(&t)),
                    );
                }
                Arc::new(out.finish())
            }
            DataType::Struct(_)
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(..)
            | DataType::Map(..) => {
                let mut out = StringBuilder::with_capacity(rows, rows * 32);
                for row in 0..rows {
                    if array.is_null(row) {
                        out.append_null();
                    } else {
                        out.append_value(value_at(array.as_ref(), row)?.to_string());
                    }
                }
                Arc::new(out.finish())
            }
            _ => cast(array, &DataType::Utf8)?,
        };
        finish(result, &args.args)
    }
}

/// Trino's `concat`: the arguments' text joined, NULL when any argument is NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Concat {
    signature: Signature,
}

impl Concat {
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl Default for Concat {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for Concat {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &str {
        "concat"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        if arg_types.is_empty() {
            return Err(plan_error("concat", "expected at least one argument"));
        }
        arg_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if *t == DataType::Utf8
                    || *t == DataType::Null
                    || can_cast_types(t, &DataType::Utf8)
                {
                    Ok(DataType::Utf8)
                } else {
                    Err(plan_error(
                        "concat",
                        format!(
                            "argument {} has type {t}, which has no text form; CAST it to VARCHAR",
                            i + 1
                        ),
                    ))
                }
            })
            .collect()
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let input = arrays(&args.args)?;
        let columns = input
            .iter()
            .map(|a| {
                a.as_string_opt::<i32>().ok_or_else(|| {
                    fn_error("concat", format!("expected text, found {}", a.data_type()))
                })
            })
            .collect::<DFResult<Vec<_>>>()?;
        let rows = input[0].len();
        let mut out = StringBuilder::with_capacity(rows, rows * 16);
        let mut buffer = String::new();
        'rows: for row in 0..rows {
            buffer.clear();
            for column in &columns {
                if column.is_null(row) {
                    out.append_null();
                    continue 'rows;
                }
                buffer.push_str(column.value(row));
            }
            out.append_value(&buffer);
        }
        finish(Arc::new(out.finish()), &args.args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_print_like_java() {
        let cases = [
            (1.5, "1.5"),
            (72.0, "72.0"),
            (176.35499866729558, "176.35499866729558"),
            (0.001, "0.001"),
            (0.0001, "1.0E-4"),
            (1.234e-5, "1.234E-5"),
            (9_999_999.0, "9999999.0"),
            (10_000_000.0, "1.0E7"),
            (1.5e300, "1.5E300"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (100.0, "100.0"),
            (0.1, "0.1"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (v, expected) in cases {
            assert_eq!(format_double(v), expected, "{v}");
        }
        assert_eq!(format_real(0.1f32), "0.1");
        assert_eq!(format_real(1.0e8f32), "1.0E8");
    }
}
