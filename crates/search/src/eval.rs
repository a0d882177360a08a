//! Search criteria evaluated on the nested Arrow columns of a lake table.
//!
//! A compiled [`Path`] walks struct fields and traverses lists implicitly; the criterion holds
//! for a row when any value reached matches (FHIR search semantics over repeating elements).
//! The evaluation works a whole column batch at a time: lists are descended through their
//! flat child arrays and folded back to rows with their offsets, so the cost is one pass over
//! the values actually present, with no JSON parsing.

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, GenericListArray, OffsetSizeTrait, StringArray,
    StructArray,
};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result as DFResult};

use super::catalog::{Path, Step};
use super::value::{self, Micros, Prefix};

/// How a string value must relate to the search value (both folded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StringMode {
    /// Default: starts with, ignoring case and accents.
    Prefix,
    /// `:exact`: equal, case- and accent-sensitive.
    Exact,
    /// `:contains`: anywhere, ignoring case and accents.
    Contains,
}

/// One token search value: `code`, `system|code`, `|code` or `system|`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token {
    /// `None`: any system; `Some("")`: no system.
    pub system: Option<String>,
    /// `None`: any code in the system.
    pub code: Option<String>,
}

/// A `:of-type` value: the identifier type's coding and the identifier value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OfType {
    pub system: String,
    pub code: String,
    pub value: String,
}

/// A test on the value a path reaches. Several values of one parameter are ORed.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// The value is present.
    Exists,
    String {
        values: Vec<String>,
        mode: StringMode,
    },
    Token(Vec<Token>),
    /// `:text` on tokens: display text starts with (folded).
    TokenText(Vec<String>),
    OfType(Vec<OfType>),
    /// References by `Type/id` keys, or by id alone when the type is `None`.
    Reference(Vec<(Option<String>, String)>),
    /// `:identifier` on references.
    ReferenceIdentifier(Vec<Token>),
    Date(Vec<(Prefix, Micros, Micros)>),
    Number(Vec<(Prefix, f64, f64)>),
    Quantity(Vec<QuantityValue>),
    Uri {
        values: Vec<String>,
        mode: UriMode,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantityValue {
    pub prefix: Prefix,
    pub lo: f64,
    pub hi: f64,
    pub system: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UriMode {
    Exact,
    Below,
    Above,
}

/// A criterion on one table: any path matching makes the row match (optionally negated).
#[derive(Debug, Clone, PartialEq)]
pub enum Criterion {
    Paths {
        paths: Vec<Path>,
        test: Test,
        negate: bool,
    },
    /// A composite parameter: every component matches within one element of `base` (or the
    /// row, when `base` is `None`).
    Composite {
        base: Option<Path>,
        components: Vec<(Vec<Path>, Test)>,
    },
    /// Any of several criteria (comma-separated composite values).
    Any(Vec<Criterion>),
}

impl Criterion {
    /// Evaluates the criterion on a batch given by its columns (top-level table columns by name).
    pub fn evaluate(&self, columns: &[(String, ArrayRef)], rows: usize) -> DFResult<Vec<bool>> {
        match self {
            Criterion::Paths {
                paths,
                test,
                negate,
            } => {
                let mut out = vec![false; rows];
                for path in paths {
                    let Some(array) = column(columns, path) else {
                        continue;
                    };
                    let hit = walk(array, &path.steps, &|a| leaf(a, &path.fhir, test))?;
                    or_into(&mut out, &hit);
                }
                if *negate {
                    out.iter_mut().for_each(|b| *b = !*b);
                }
                Ok(out)
            }
            Criterion::Composite { base, components } => match base {
                None => {
                    let mut out = vec![true; rows];
                    for (paths, test) in components {
                        let part = Criterion::Paths {
                            paths: paths.clone(),
                            test: test.clone(),
                            negate: false,
                        }
                        .evaluate(columns, rows)?;
                        and_into(&mut out, &part);
                    }
                    Ok(out)
                }
                Some(base) => {
                    let Some(array) = column(columns, base) else {
                        return Ok(vec![false; rows]);
                    };
                    walk(array, &base.steps, &|element| {
                        let mut all = vec![true; element.len()];
                        for (paths, test) in components {
                            let mut any = vec![false; element.len()];
                            for p in paths {
                                let hit = walk(element, &p.steps, &|a| leaf(a, &p.fhir, test))?;
                                or_into(&mut any, &hit);
                            }
                            and_into(&mut all, &any);
                        }
                        Ok(all)
                    })
                }
            },
            Criterion::Any(all) => {
                let mut out = vec![false; rows];
                for c in all {
                    or_into(&mut out, &c.evaluate(columns, rows)?);
                }
                Ok(out)
            }
        }
    }
}

fn column<'a>(columns: &'a [(String, ArrayRef)], path: &Path) -> Option<&'a ArrayRef> {
    let name = path.column.as_deref()?;
    columns.iter().find(|(n, _)| n == name).map(|(_, a)| a)
}

fn or_into(out: &mut [bool], other: &[bool]) {
    out.iter_mut().zip(other).for_each(|(a, b)| *a |= *b);
}

fn and_into(out: &mut [bool], other: &[bool]) {
    out.iter_mut().zip(other).for_each(|(a, b)| *a &= *b);
}

type Leaf<'a> = dyn Fn(&ArrayRef) -> DFResult<Vec<bool>> + 'a;

/// Walks `steps` from `array`; true per element of `array` when some value reached passes
/// `leaf`. Lists anywhere are traversed and folded back with their offsets.
pub fn walk(array: &ArrayRef, steps: &[Step], leaf: &Leaf<'_>) -> DFResult<Vec<bool>> {
    if let Some(list) = array.as_list_opt::<i32>() {
        return any_per_list(list, steps, leaf);
    }
    if let Some(list) = array.as_list_opt::<i64>() {
        return any_per_list(list, steps, leaf);
    }
    let Some((step, rest)) = steps.split_first() else {
        let mut out = leaf(array)?;
        mask_nulls(&mut out, array);
        return Ok(out);
    };
    let Some(s) = array.as_struct_opt() else {
        return Err(DataFusionError::Internal(format!(
            "search path step {step:?} on a non-struct column of type {}",
            array.data_type()
        )));
    };
    let mut out = match step {
        Step::Field(name) => match s.column_by_name(name) {
            Some(child) => walk(child, rest, leaf)?,
            None => vec![false; s.len()],
        },
        Step::Resolves(target) => {
            let mut out = walk(array, rest, leaf)?;
            let kinds = reference_type_is(s, target)?;
            out.iter_mut().zip(kinds).for_each(|(b, t)| *b &= t);
            out
        }
        Step::Where { element, value } => {
            let mut out = walk(array, rest, leaf)?;
            match s.column_by_name(element) {
                Some(child) => {
                    let strings = utf8(child)?;
                    for (i, b) in out.iter_mut().enumerate() {
                        *b &= strings.is_valid(i) && strings.value(i) == value;
                    }
                }
                None => out.iter_mut().for_each(|b| *b = false),
            }
            out
        }
    };
    mask_nulls(&mut out, array);
    Ok(out)
}

/// Walks a list's values and folds the result back: a list matches when any element does.
fn any_per_list<O: OffsetSizeTrait>(
    list: &GenericListArray<O>,
    steps: &[Step],
    leaf: &Leaf<'_>,
) -> DFResult<Vec<bool>> {
    let inner = walk(list.values(), steps, leaf)?;
    let offsets = list.value_offsets();
    Ok((0..list.len())
        .map(|i| {
            list.is_valid(i)
                && inner[offsets[i].as_usize()..offsets[i + 1].as_usize()]
                    .iter()
                    .any(|b| *b)
        })
        .collect())
}

fn mask_nulls(out: &mut [bool], array: &ArrayRef) {
    if let Some(nulls) = array.logical_nulls() {
        out.iter_mut()
            .zip(nulls.iter())
            .for_each(|(b, valid)| *b &= valid);
    }
}

/// The arrays of a struct's children by name, as Utf8.
fn utf8(array: &ArrayRef) -> DFResult<StringArray> {
    Ok(cast(array, &DataType::Utf8)?.as_string::<i32>().clone())
}

/// Whether each reference in a `Reference` struct array points at resource type `target`:
/// its `type` element, else the type part of `reference`.
fn reference_type_is(s: &StructArray, target: &str) -> DFResult<Vec<bool>> {
    let refs = s.column_by_name("reference").map(utf8).transpose()?;
    let types = s.column_by_name("type").map(utf8).transpose()?;
    Ok((0..s.len())
        .map(|i| {
            if let Some(t) = types.as_ref().filter(|t| t.is_valid(i)) {
                return t.value(i) == target;
            }
            let Some(r) = refs.as_ref().filter(|r| r.is_valid(i)) else {
                return false;
            };
            let r = r.value(i);
            if is_plain_relative(r) {
                // `Type/id`: the common case, without parsing.
                r.len() > target.len()
                    && r.as_bytes()[target.len()] == b'/'
                    && r.starts_with(target)
            } else {
                value::reference_key(r).is_some_and(|(t, _)| t == target)
            }
        })
        .collect())
}

/// A relative reference without a version or scheme (`Patient/123`): no `:` and no `_`
/// (which `/_history/` needs). Both are single-byte scans.
fn is_plain_relative(r: &str) -> bool {
    !r.bytes().any(|b| b == b':' || b == b'_')
}

fn child<'a>(array: &'a ArrayRef, name: &str) -> Option<&'a ArrayRef> {
    array.as_struct_opt()?.column_by_name(name)
}

/// Evaluates `test` on each value of a leaf array of FHIR type `fhir`.
///
/// Each kind of test has its own function, which knows the FHIR types the test can meet:
/// complex types are matched through their children (recursing into `leaf` with the child's
/// type), primitives directly.
fn leaf(array: &ArrayRef, fhir: &str, test: &Test) -> DFResult<Vec<bool>> {
    match test {
        Test::Exists => Ok(vec![true; array.len()]),
        Test::String { values, mode } => string_leaf(array, fhir, test, values, *mode),
        Test::Token(tokens) => token_leaf(array, fhir, test, tokens),
        Test::TokenText(values) => token_text_leaf(array, fhir, test, values),
        Test::OfType(values) => of_type_leaf(array, fhir, values),
        Test::Reference(keys) => reference_leaf(array, fhir, keys),
        Test::ReferenceIdentifier(tokens) => match child(array, "identifier") {
            Some(id) => walk(id, &[], &|a| {
                leaf(a, "Identifier", &Test::Token(tokens.clone()))
            }),
            None => no_match(array),
        },
        Test::Date(values) => date_leaf(array, fhir, values),
        Test::Number(values) => {
            let numbers = numbers(array)?;
            Ok(numbers
                .iter()
                .map(|v| v.is_some_and(|v| number_matches(v, values)))
                .collect())
        }
        Test::Quantity(values) if fhir == "Range" => range_leaf(array, values),
        Test::Quantity(values) => quantity_leaf(array, values),
        Test::Uri { values, mode } => strings(array, |s| {
            values.iter().any(|v| match mode {
                UriMode::Exact => s == v,
                UriMode::Below => s.starts_with(v.as_str()),
                UriMode::Above => v.starts_with(s),
            })
        }),
    }
}

/// No value of `array` matches: the answer for a type a test cannot apply to.
fn no_match(array: &ArrayRef) -> DFResult<Vec<bool>> {
    Ok(vec![false; array.len()])
}

/// Whether `test` holds on any of the struct children `fields` (of FHIR type `fhir`) of each
/// value of `array`: a complex type matches when one of its parts does.
fn any_child(array: &ArrayRef, fields: &[&str], fhir: &str, test: &Test) -> DFResult<Vec<bool>> {
    let mut out = vec![false; array.len()];
    for f in fields {
        if let Some(c) = child(array, f) {
            let hit = walk(c, &[], &|a| leaf(a, fhir, test))?;
            or_into(&mut out, &hit);
        }
    }
    Ok(out)
}

/// A string test: on names and addresses any of their text parts, else the value itself.
fn string_leaf(
    array: &ArrayRef,
    fhir: &str,
    test: &Test,
    values: &[String],
    mode: StringMode,
) -> DFResult<Vec<bool>> {
    match fhir {
        "HumanName" => any_child(
            array,
            &["text", "family", "given", "prefix", "suffix"],
            "string",
            test,
        ),
        "Address" => any_child(
            array,
            &[
                "text",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ],
            "string",
            test,
        ),
        _ => strings(array, |s| string_matches(s, values, mode)),
    }
}

/// A token test: on the codings of a concept, the system and code (or value) of a coding,
/// identifier or contact point, `true`/`false` of a boolean, else the code alone.
fn token_leaf(array: &ArrayRef, fhir: &str, test: &Test, tokens: &[Token]) -> DFResult<Vec<bool>> {
    match fhir {
        "CodeableConcept" => any_child(array, &["coding"], "Coding", test),
        "Coding" => system_code(array, "system", "code", tokens),
        "Identifier" => system_code(array, "system", "value", tokens),
        "ContactPoint" => system_code(array, "system", "value", tokens),
        "boolean" => {
            let b = array.as_boolean_opt();
            Ok((0..array.len())
                .map(|i| {
                    b.is_some_and(|b| b.is_valid(i)) && {
                        let v = if b.unwrap().value(i) { "true" } else { "false" };
                        tokens.iter().any(|t| t.code.as_deref() == Some(v))
                    }
                })
                .collect())
        }
        _ => strings(array, |s| {
            tokens.iter().any(|t| match &t.code {
                Some(code) => code == s,
                None => false,
            })
        }),
    }
}

/// A `:text` token test: the text of a concept or the display of its codings, the display of
/// a coding, the type of an identifier, else a folded prefix of the value.
fn token_text_leaf(
    array: &ArrayRef,
    fhir: &str,
    test: &Test,
    values: &[String],
) -> DFResult<Vec<bool>> {
    match fhir {
        "CodeableConcept" => {
            let mut out = any_child(array, &["text"], "string", test)?;
            or_into(&mut out, &any_child(array, &["coding"], "Coding", test)?);
            Ok(out)
        }
        "Coding" => any_child(array, &["display"], "string", test),
        "Identifier" => match child(array, "type") {
            Some(t) => walk(t, &[], &|a| leaf(a, "CodeableConcept", test)),
            None => no_match(array),
        },
        _ => strings(array, |s| string_matches(s, values, StringMode::Prefix)),
    }
}

/// An `:of-type` test: only identifiers, whose type has the coding and whose value is equal,
/// both in the same identifier.
fn of_type_leaf(array: &ArrayRef, fhir: &str, values: &[OfType]) -> DFResult<Vec<bool>> {
    let n = array.len();
    if fhir != "Identifier" {
        return no_match(array);
    }
    let mut out = vec![false; n];
    for v in values {
        let token = vec![Token {
            system: Some(v.system.clone()),
            code: Some(v.code.clone()),
        }];
        let typed = match child(array, "type") {
            Some(t) => walk(t, &[], &|a| {
                leaf(a, "CodeableConcept", &Test::Token(token.clone()))
            })?,
            None => vec![false; n],
        };
        let valued = match child(array, "value") {
            Some(c) => strings(c, |s| s == v.value)?,
            None => vec![false; n],
        };
        for i in 0..n {
            out[i] |= typed[i] && valued[i];
        }
    }
    Ok(out)
}

/// A reference test: the `reference` element of a Reference, else the value itself.
fn reference_leaf(
    array: &ArrayRef,
    fhir: &str,
    keys: &[(Option<String>, String)],
) -> DFResult<Vec<bool>> {
    let matcher = ReferenceMatcher::new(keys);
    match fhir {
        "Reference" => match child(array, "reference") {
            Some(r) => strings(r, |s| matcher.matches(s)),
            None => no_match(array),
        },
        _ => strings(array, |s| matcher.matches(s)),
    }
}

/// A date test: any range the value denotes (see [`date_ranges`]) against any search range,
/// `ap` widened to its approximation first.
fn date_leaf(
    array: &ArrayRef,
    fhir: &str,
    values: &[(Prefix, Micros, Micros)],
) -> DFResult<Vec<bool>> {
    let ranges = date_ranges(array, fhir)?;
    Ok(ranges
        .iter()
        .map(|r| {
            r.iter().any(|&(t_lo, t_hi)| {
                values.iter().any(|&(p, lo, hi)| {
                    let (lo, hi) = if p == Prefix::Ap {
                        value::approximate(lo, hi)
                    } else {
                        (lo, hi)
                    };
                    p.matches(lo, hi, t_lo, t_hi)
                })
            })
        })
        .collect())
}

/// A quantity test on a Range: the range from its low to its high value (open at a missing
/// end) against each search range; units are not compared.
fn range_leaf(array: &ArrayRef, values: &[QuantityValue]) -> DFResult<Vec<bool>> {
    let (Some(low), Some(high)) = (child(array, "low"), child(array, "high")) else {
        return no_match(array);
    };
    let lo = numbers(child(low, "value").unwrap_or(low))?;
    let hi = numbers(child(high, "value").unwrap_or(high))?;
    Ok((0..array.len())
        .map(|i| {
            let t_lo = lo[i].unwrap_or(f64::NEG_INFINITY);
            let t_hi = hi[i].unwrap_or(f64::INFINITY);
            (lo[i].is_some() || hi[i].is_some())
                && values
                    .iter()
                    .any(|q| q.prefix.matches(q.lo, q.hi, t_lo, t_hi))
        })
        .collect())
}

/// A quantity test on a Quantity: the value against the search number, and the system and
/// code when given (a code without a system also matches the human-readable unit).
fn quantity_leaf(array: &ArrayRef, values: &[QuantityValue]) -> DFResult<Vec<bool>> {
    let Some(v) = child(array, "value") else {
        return no_match(array);
    };
    let nums = numbers(v)?;
    let systems = child(array, "system").map(utf8).transpose()?;
    let codes = child(array, "code").map(utf8).transpose()?;
    let units = child(array, "unit").map(utf8).transpose()?;
    let text = |a: &Option<StringArray>, i: usize| {
        a.as_ref()
            .filter(|a| a.is_valid(i))
            .map(|a| a.value(i).to_string())
    };
    Ok((0..array.len())
        .map(|i| {
            let Some(x) = nums[i] else { return false };
            values.iter().any(|q| {
                number_matches(x, &[(q.prefix, q.lo, q.hi)])
                    && q.system
                        .as_ref()
                        .is_none_or(|s| text(&systems, i).as_deref() == Some(s))
                    && q.code.as_ref().is_none_or(|c| {
                        text(&codes, i).as_deref() == Some(c)
                            || (q.system.is_none() && text(&units, i).as_deref() == Some(c))
                    })
            })
        })
        .collect())
}

fn strings(array: &ArrayRef, pred: impl Fn(&str) -> bool) -> DFResult<Vec<bool>> {
    if !matches!(
        array.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Ok(vec![false; array.len()]);
    }
    let s = utf8(array)?;
    Ok((0..s.len())
        .map(|i| s.is_valid(i) && pred(s.value(i)))
        .collect())
}

fn string_matches(s: &str, values: &[String], mode: StringMode) -> bool {
    match mode {
        StringMode::Exact => values.iter().any(|v| v == s),
        StringMode::Prefix => {
            let f = value::fold(s);
            values.iter().any(|v| f.starts_with(v.as_str()))
        }
        StringMode::Contains => {
            let f = value::fold(s);
            values.iter().any(|v| f.contains(v.as_str()))
        }
    }
}

/// Reference search values prepared for matching many stored references: exact `Type/id`
/// keys and bare ids in hash sets, so the common relative reference costs one lookup.
struct ReferenceMatcher<'a> {
    keys: &'a [(Option<String>, String)],
    typed: std::collections::HashSet<String>,
    untyped: std::collections::HashSet<&'a str>,
}

impl<'a> ReferenceMatcher<'a> {
    fn new(keys: &'a [(Option<String>, String)]) -> Self {
        let mut typed = std::collections::HashSet::new();
        let mut untyped = std::collections::HashSet::new();
        for (t, id) in keys {
            match t {
                Some(t) => {
                    typed.insert(format!("{t}/{id}"));
                }
                None => {
                    untyped.insert(id.as_str());
                }
            }
        }
        Self {
            keys,
            typed,
            untyped,
        }
    }

    fn matches(&self, reference: &str) -> bool {
        if self.typed.contains(reference) {
            return true;
        }
        if !is_plain_relative(reference) {
            return reference_matches(reference, self.keys);
        }
        if self.untyped.is_empty() {
            return false;
        }
        let id = reference.rsplit('/').next().unwrap_or(reference);
        self.untyped.contains(id) && (reference.contains('/') || self.untyped.contains(reference))
    }
}

fn reference_matches(reference: &str, keys: &[(Option<String>, String)]) -> bool {
    let Some((ty, id)) = value::reference_key(reference) else {
        return keys.iter().any(|(_, k)| k == reference);
    };
    keys.iter()
        .any(|(t, k)| k == id && t.as_deref().is_none_or(|t| t == ty))
}

fn system_code(
    array: &ArrayRef,
    system_field: &str,
    code_field: &str,
    tokens: &[Token],
) -> DFResult<Vec<bool>> {
    let n = array.len();
    let systems = child(array, system_field).map(utf8).transpose()?;
    let codes = child(array, code_field).map(utf8).transpose()?;
    fn get(a: &Option<StringArray>, i: usize) -> Option<&str> {
        a.as_ref().filter(|a| a.is_valid(i)).map(|a| a.value(i))
    }
    Ok((0..n)
        .map(|i| {
            let code = get(&codes, i);
            tokens.iter().any(|t| {
                let code_ok = match t.code.as_deref() {
                    None => true,
                    Some(c) => code == Some(c),
                };
                code_ok
                    && match t.system.as_deref() {
                        None => true,
                        Some("") => get(&systems, i).is_none(),
                        Some(s) => get(&systems, i) == Some(s),
                    }
            })
        })
        .collect())
}

fn number_matches(x: f64, values: &[(Prefix, f64, f64)]) -> bool {
    values.iter().any(|&(p, lo, hi)| match p {
        Prefix::Eq => lo <= x && x < hi,
        Prefix::Ne => !(lo <= x && x < hi),
        Prefix::Gt | Prefix::Sa => x > (lo + hi) / 2.0,
        Prefix::Lt | Prefix::Eb => x < (lo + hi) / 2.0,
        Prefix::Ge => x >= (lo + hi) / 2.0,
        Prefix::Le => x <= (lo + hi) / 2.0,
        Prefix::Ap => {
            let mid = (lo + hi) / 2.0;
            (x - mid).abs() <= (mid.abs() * 0.1).max(hi - lo)
        }
    })
}

fn numbers(array: &ArrayRef) -> DFResult<Vec<Option<f64>>> {
    if !array.data_type().is_numeric() {
        return Ok(vec![None; array.len()]);
    }
    let a = cast(array, &DataType::Float64)?;
    let a: &Float64Array = a.as_primitive();
    Ok(a.iter().collect())
}

/// The ranges each value of a date-like leaf denotes (a Timing has several).
fn date_ranges(array: &ArrayRef, fhir: &str) -> DFResult<Vec<Vec<(Micros, Micros)>>> {
    let n = array.len();
    let parse = |a: &ArrayRef| -> DFResult<Vec<Option<(Micros, Micros)>>> {
        if !matches!(
            a.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Ok(vec![None; a.len()]);
        }
        let s = utf8(a)?;
        Ok((0..s.len())
            .map(|i| {
                s.is_valid(i)
                    .then(|| value::date_range(s.value(i)))
                    .flatten()
            })
            .collect())
    };
    match fhir {
        "Period" => {
            let start = child(array, "start").map(parse).transpose()?;
            let end = child(array, "end").map(parse).transpose()?;
            Ok((0..n)
                .map(|i| {
                    let lo = start.as_ref().and_then(|s| s[i]).map(|r| r.0);
                    let hi = end.as_ref().and_then(|e| e[i]).map(|r| r.1);
                    if lo.is_none() && hi.is_none() {
                        return vec![];
                    }
                    vec![(lo.unwrap_or(i64::MIN), hi.unwrap_or(i64::MAX))]
                })
                .collect())
        }
        "Timing" => {
            let Some(events) = child(array, "event") else {
                return Ok(vec![vec![]; n]);
            };
            let Some(list) = events.as_list_opt::<i32>() else {
                return Ok(vec![vec![]; n]);
            };
            let values = parse(list.values())?;
            let offsets = list.value_offsets();
            Ok((0..n)
                .map(|i| {
                    values[offsets[i] as usize..offsets[i + 1] as usize]
                        .iter()
                        .flatten()
                        .copied()
                        .collect()
                })
                .collect())
        }
        _ => Ok(parse(array)?
            .into_iter()
            .map(|r| r.into_iter().collect())
            .collect()),
    }
}

/// Sort keys of a search parameter, one per row: the smallest value for ascending order, the
/// largest for descending. Dates sort by instant, numbers and quantities by value, everything
/// else by folded text.
#[derive(Debug, Clone)]
pub struct SortKeySpec {
    pub paths: Vec<Path>,
    pub kind: SortKind,
    pub descending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortKind {
    Date,
    Number,
    Text,
}

impl SortKeySpec {
    /// The best key per row over the values of every path.
    pub fn keys(&self, columns: &[(String, ArrayRef)], rows: usize) -> DFResult<KeyColumn> {
        let mut dates: Vec<Option<i64>> = vec![None; rows];
        let mut nums: Vec<Option<f64>> = vec![None; rows];
        let mut texts: Vec<Option<String>> = vec![None; rows];
        let desc = self.descending;
        for path in &self.paths {
            let Some(array) = column(columns, path) else {
                continue;
            };
            let (leaf, owners) = flatten(array, &path.steps, (0..rows).collect());
            match self.kind {
                SortKind::Date => {
                    for (i, ranges) in date_ranges(&leaf, &path.fhir)?.into_iter().enumerate() {
                        for (lo, hi) in ranges {
                            if owners[i] != usize::MAX {
                                let k = if desc { hi } else { lo };
                                dates[owners[i]] = Some(pick(dates[owners[i]], k, desc));
                            }
                        }
                    }
                }
                SortKind::Number => {
                    let (leaf, owners) = match path.fhir.as_str() {
                        "Quantity" | "SimpleQuantity" | "Age" | "Duration" | "Count"
                        | "Distance" | "Money" | "MoneyQuantity" => {
                            flatten(&leaf, &[Step::Field("value".into())], owners)
                        }
                        _ => (leaf, owners),
                    };
                    for (i, v) in numbers(&leaf)?.into_iter().enumerate() {
                        if let (Some(x), true) = (v, owners[i] != usize::MAX) {
                            let r = owners[i];
                            nums[r] = Some(match nums[r] {
                                None => x,
                                Some(y) if desc => y.max(x),
                                Some(y) => y.min(x),
                            });
                        }
                    }
                }
                SortKind::Text => {
                    let sub: &[&str] = match path.fhir.as_str() {
                        "HumanName" => &["family"],
                        "Address" => &["city"],
                        "Coding" => &["code"],
                        "CodeableConcept" => &["coding", "code"],
                        "Identifier" | "ContactPoint" => &["value"],
                        "Reference" => &["reference"],
                        _ => &[],
                    };
                    let steps: Vec<Step> = sub.iter().map(|f| Step::Field(f.to_string())).collect();
                    let (leaf, owners) = flatten(&leaf, &steps, owners);
                    let text = match leaf.data_type() {
                        DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View
                        | DataType::Boolean => utf8(&leaf)?,
                        _ => continue,
                    };
                    for i in 0..text.len() {
                        if owners[i] == usize::MAX || !text.is_valid(i) {
                            continue;
                        }
                        let t = value::fold(text.value(i));
                        let slot = &mut texts[owners[i]];
                        let better = match slot {
                            None => true,
                            Some(y) => (desc && t > *y) || (!desc && t < *y),
                        };
                        if better {
                            *slot = Some(t);
                        }
                    }
                }
            }
        }
        Ok(match self.kind {
            SortKind::Date => KeyColumn::Date(dates),
            SortKind::Number => KeyColumn::Number(nums),
            SortKind::Text => KeyColumn::Text(texts),
        })
    }
}

fn pick(current: Option<i64>, k: i64, descending: bool) -> i64 {
    match current {
        None => k,
        Some(c) if descending => c.max(k),
        Some(c) => c.min(k),
    }
}

/// Sort keys of a batch, one per row.
pub enum KeyColumn {
    Date(Vec<Option<i64>>),
    Number(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
}

/// The values `steps` reach below `array`, flattened into one array, with the row each
/// belongs to (`usize::MAX` below a null parent). `owners` gives the row of each element of
/// `array`. Filters (`Resolves`, `Where`) are not applied: sorting uses every value.
pub(crate) fn flatten(
    array: &ArrayRef,
    steps: &[Step],
    owners: Vec<usize>,
) -> (ArrayRef, Vec<usize>) {
    let masked = |owners: Vec<usize>, a: &ArrayRef| -> Vec<usize> {
        match a.logical_nulls() {
            Some(nulls) => owners
                .into_iter()
                .zip(nulls.iter())
                .map(|(o, valid)| if valid { o } else { usize::MAX })
                .collect(),
            None => owners,
        }
    };
    if let Some(list) = array.as_list_opt::<i32>() {
        let owners = masked(owners, array);
        let offsets = list.value_offsets();
        let mut inner = vec![usize::MAX; list.values().len()];
        for (i, owner) in owners.iter().enumerate() {
            for slot in &mut inner[offsets[i] as usize..offsets[i + 1] as usize] {
                *slot = *owner;
            }
        }
        return flatten(list.values(), steps, inner);
    }
    match steps.split_first() {
        None => (array.clone(), owners),
        Some((Step::Field(name), rest)) => match child(array, name) {
            Some(c) => {
                let owners = masked(owners, array);
                flatten(c, rest, owners)
            }
            None => (array.slice(0, 0), Vec::new()),
        },
        Some((_, rest)) => flatten(array, rest, owners),
    }
}
