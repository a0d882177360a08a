//! Trino functions and cast semantics for DataFusion.
//!
//! Athena (engine 3) runs Trino, and HealthLake's guide relies on Trino functions DataFusion
//! lacks or defines differently: `json_extract` on the `array<string>` extension columns,
//! `year(date(birthdate))` for ages, `CONCAT` that is null when any argument is null, and
//! casts (`CAST(valuequantity.value AS VARCHAR)`, `CAST(json_extract(..) AS int)`).
//!
//! * [`json`]: `json_extract`, `json_extract_scalar`, `json_array_length`, `json_size`,
//!   `json_parse`, `json_format` (JSON values are `varchar` holding JSON text).
//! * [`datetime`]: `year` ... `millisecond`, `day_of_week`, `day_of_year`, `quarter`, `week`,
//!   `year_of_week`, `date`, `date_diff`, `date_add`, `from_iso8601_timestamp`,
//!   `from_iso8601_date`, `to_iso8601`.
//! * [`text`]: Trino `concat`, and the `varchar` rendering used by casts.
//! * [`TrinoCasts`]: a function rewrite applied to every logical plan before type coercion,
//!   when argument types are known, giving `CAST` Trino's meaning where DataFusion's differs.
//!
//! The `datafusion-functions-json` functions (`json_get`, `json_get_str`, `->`, `->>`, ...)
//! are registered too; their names do not clash with these.

pub mod datetime;
pub mod json;
pub mod text;
mod to_json;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, LargeStringArray, StringArray, StringViewArray};
use arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result as DFResult, ScalarValue, config::ConfigOptions};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::expr::{Cast, ScalarFunction};
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
use datafusion::logical_expr::{ColumnarValue, Expr, ExprSchemable, ScalarUDF};

/// Registers the JSON extension functions, every Trino function here and [`TrinoCasts`].
///
/// Trino semantics win on name clashes: these are registered after the JSON extension.
pub fn register(registry: &mut dyn FunctionRegistry) -> DFResult<()> {
    datafusion_functions_json::register_all(registry)?;
    for udf in scalar_udfs() {
        registry.register_udf(udf)?;
    }
    registry.register_function_rewrite(Arc::new(TrinoCasts))?;
    Ok(())
}

/// Every SQL-callable function defined here.
pub fn scalar_udfs() -> Vec<Arc<ScalarUDF>> {
    let mut udfs = Vec::new();
    udfs.extend(json::udfs());
    udfs.extend(datetime::udfs());
    udfs.extend(text::udfs());
    udfs
}

/// Gives `CAST` Trino's meaning where DataFusion's differs; see the module docs.
///
/// * `CAST(<json> AS <number|boolean|varchar>)`, where `<json>` is a `json_extract` or
///   `json_parse` call, converts the JSON value as Trino's JSON cast does: numbers round to
///   integers (half away from zero), JSON strings lose their quotes, JSON null is NULL.
/// * `CAST(<double|real|struct|array|map|timestamp> AS VARCHAR)` renders as described in
///   [`text`] instead of Arrow's text form (structs have none).
/// * `CAST(<varchar> AS DATE)` is `date(..)`, so both accept FHIR dateTimes alike.
#[derive(Debug)]
pub struct TrinoCasts;

impl FunctionRewrite for TrinoCasts {
    fn name(&self) -> &str {
        "fhirlake_trino_casts"
    }

    fn rewrite(
        &self,
        expr: Expr,
        schema: &DFSchema,
        _config: &ConfigOptions,
    ) -> DFResult<Transformed<Expr>> {
        let Expr::Cast(Cast {
            expr: inner,
            data_type,
        }) = &expr
        else {
            return Ok(Transformed::no(expr));
        };
        if is_json_producer(inner) {
            if let Some(cast) = json::cast_udf_for(data_type) {
                let converted = call(cast, vec![inner.as_ref().clone()]);
                return Ok(Transformed::yes(with_cast(converted, data_type)));
            }
            return Ok(Transformed::no(expr));
        }
        // An expression whose type cannot be computed yet is left for DataFusion to report.
        let Ok(source) = inner.get_type(schema) else {
            return Ok(Transformed::no(expr));
        };
        if is_string(data_type) && text::needs_trino_varchar(&source) {
            let rendered = call(text::trino_varchar_udf(), vec![inner.as_ref().clone()]);
            return Ok(Transformed::yes(with_cast(rendered, data_type)));
        }
        if *data_type == DataType::Date32 && is_string(&source) {
            let date = call(datetime::date_udf(), vec![inner.as_ref().clone()]);
            return Ok(Transformed::yes(date));
        }
        Ok(Transformed::no(expr))
    }
}

fn call(udf: Arc<ScalarUDF>, args: Vec<Expr>) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(udf, args))
}

/// `expr` (of a string, bigint, double or boolean type) cast to `target` unless already so.
fn with_cast(expr: Expr, target: &DataType) -> Expr {
    Expr::Cast(Cast::new(Box::new(expr), target.clone()))
}

/// True for calls whose `varchar` result is JSON text.
fn is_json_producer(expr: &Expr) -> bool {
    match expr {
        Expr::ScalarFunction(f) => matches!(f.func.name(), "json_extract" | "json_parse"),
        Expr::Alias(a) => is_json_producer(&a.expr),
        _ => false,
    }
}

pub(crate) fn is_string(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// Read access to a string array of any of Arrow's three layouts.
#[derive(Clone, Copy)]
pub(crate) enum Strings<'a> {
    Utf8(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
}

impl<'a> Strings<'a> {
    pub fn try_new(array: &'a dyn Array) -> Option<Self> {
        let any = array.as_any();
        if let Some(a) = any.downcast_ref::<StringArray>() {
            Some(Self::Utf8(a))
        } else if let Some(a) = any.downcast_ref::<LargeStringArray>() {
            Some(Self::Large(a))
        } else {
            any.downcast_ref::<StringViewArray>().map(Self::View)
        }
    }

    pub fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Self::Utf8(a) => (!a.is_null(i)).then(|| a.value(i)),
            Self::Large(a) => (!a.is_null(i)).then(|| a.value(i)),
            Self::View(a) => (!a.is_null(i)).then(|| a.value(i)),
        }
    }
}

/// The string value of a scalar argument (`None` for NULL or a non-string scalar).
pub(crate) fn scalar_str(value: &ColumnarValue) -> Option<&str> {
    match value {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s),
        ) => s.as_deref(),
        _ => None,
    }
}

/// The text of a string literal argument, as seen while planning.
pub(crate) fn literal_str(value: &ScalarValue) -> Option<&str> {
    match value {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => s.as_deref(),
        _ => None,
    }
}

/// Expands `args` to arrays of one length (scalars repeated), for row-wise functions.
pub(crate) fn arrays(args: &[ColumnarValue]) -> DFResult<Vec<ArrayRef>> {
    ColumnarValue::values_to_arrays(args)
}

/// The result as a scalar when every argument was a scalar, otherwise as an array.
pub(crate) fn finish(result: ArrayRef, args: &[ColumnarValue]) -> DFResult<ColumnarValue> {
    if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
            &result, 0,
        )?))
    } else {
        Ok(ColumnarValue::Array(result))
    }
}

/// A user-facing execution error naming the function.
pub(crate) fn fn_error(
    function: &str,
    message: impl std::fmt::Display,
) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::Execution(format!("{function}: {message}"))
}

/// A planning error naming the function (wrong argument types or count).
pub(crate) fn plan_error(
    function: &str,
    message: impl std::fmt::Display,
) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::Plan(format!("{function}: {message}"))
}
