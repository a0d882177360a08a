//! Parsing a search request's parameters into criteria and result options.
//!
//! Comma-separated values of one parameter are ORed; repeated parameters are ANDed (one
//! filter each). Unknown parameters are errors unless the request is lenient, in which case
//! they are reported back so the Bundle can say they were ignored.

use super::catalog::{Catalog, ParamType, SearchParam};
use super::eval::{Criterion, OfType, QuantityValue, StringMode, Test, Token, UriMode};
use super::value::{self, Prefix};
use fhirlake_schema::Registry;
use std::fmt;

/// Page size when `_count` is absent, and its maximum (the reference guide's limits).
pub const DEFAULT_COUNT: usize = 100;
pub const MAX_COUNT: usize = 500;
/// Chained and reverse-chained searches fail when a level matches more than this.
pub const MAX_CHAIN_MATCHES: usize = 100;
/// Most `_sort` keys allowed.
pub const MAX_SORT_KEYS: usize = 5;
/// The paging cursor parameter of `next`/`previous` links.
pub const CURSOR_PARAM: &str = "_cursor";

/// A search request that cannot be run, with the FHIR issue code to report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SearchError {
    /// `invalid`, `not-supported` or `too-costly`.
    pub code: &'static str,
    pub message: String,
}

impl SearchError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: "invalid",
            message: message.into(),
        }
    }
    pub fn not_supported(message: impl Into<String>) -> Self {
        Self {
            code: "not-supported",
            message: message.into(),
        }
    }
    pub fn too_costly(message: impl Into<String>) -> Self {
        Self {
            code: "too-costly",
            message: message.into(),
        }
    }
}

/// One condition on the searched table.
#[derive(Debug, Clone)]
pub enum Filter {
    Criterion(Criterion),
    /// `_id`: pushed down to the scan as an `IN` list.
    Ids(Vec<String>),
    /// `param:Type.chain=value`: resources referencing a `target` matching `inner`.
    Chain {
        param: SearchParam,
        target: &'static str,
        inner: Vec<Filter>,
    },
    /// `_has:Source:param:...=value`: resources referenced (through `param` of `source`) by a
    /// `source` resource matching `inner`.
    Has {
        source: &'static str,
        param: SearchParam,
        inner: Vec<Filter>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    False,
    True,
    Text,
    Data,
    Count,
}

#[derive(Debug, Clone)]
pub struct SortKey {
    pub param: SearchParam,
    pub descending: bool,
}

/// `_include` / `_revinclude` of `source:param[:target]`.
#[derive(Debug, Clone)]
pub struct Include {
    pub source: &'static str,
    pub param: SearchParam,
    pub target: Option<&'static str>,
    pub iterate: bool,
}

/// A parsed search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub resource_type: &'static str,
    pub filters: Vec<Filter>,
    pub count: usize,
    pub sort: Vec<SortKey>,
    pub total: Total,
    pub summary: Summary,
    pub elements: Option<Vec<String>>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// The paging cursor, when this is a follow-up page.
    pub cursor: Option<String>,
    /// Parameters that were ignored (lenient handling), for the Bundle's outcome.
    pub ignored: Vec<String>,
    /// The parameters that define the search (for `self`/`next` links), in request order.
    pub link_params: Vec<(String, String)>,
    /// When set, the search sees only resources in these patients' compartments (a SMART
    /// patient-level grant): matches, chains, `_has` and includes alike.
    pub patients: Option<std::collections::BTreeSet<String>>,
}

/// Parses `params` (decoded name/value pairs) for a search of `resource_type`.
pub fn parse(
    resource_type: &'static str,
    params: &[(String, String)],
    lenient: bool,
) -> Result<SearchRequest, SearchError> {
    let catalog = Catalog::global();
    let mut req = SearchRequest {
        resource_type,
        filters: Vec::new(),
        count: DEFAULT_COUNT,
        sort: Vec::new(),
        total: Total::None,
        summary: Summary::False,
        elements: None,
        includes: Vec::new(),
        revincludes: Vec::new(),
        cursor: None,
        ignored: Vec::new(),
        link_params: Vec::new(),
        patients: None,
    };
    for (name, raw) in params {
        if name != CURSOR_PARAM && name != "_format" && name != "_pretty" {
            req.link_params.push((name.clone(), raw.clone()));
        }
        match name.as_str() {
            "_format" | "_pretty" => {}
            CURSOR_PARAM => req.cursor = Some(raw.clone()),
            "_count" => {
                req.count = match raw.parse::<usize>() {
                    Ok(0) => {
                        return Err(SearchError::not_supported(
                            "_count=0 is not supported; use _summary=count for a total only",
                        ));
                    }
                    Ok(n) if n <= MAX_COUNT => n,
                    _ => {
                        return Err(SearchError::invalid(format!(
                            "_count must be a number from 1 to {MAX_COUNT}, got '{raw}'"
                        )));
                    }
                }
            }
            "_total" => {
                req.total = match raw.as_str() {
                    "none" => Total::None,
                    "accurate" => Total::Accurate,
                    "estimate" => {
                        return Err(SearchError::not_supported(
                            "_total=estimate is not supported; use accurate or none",
                        ));
                    }
                    other => {
                        return Err(SearchError::invalid(format!(
                            "invalid _total value '{other}'; use accurate or none"
                        )));
                    }
                }
            }
            "_summary" => {
                req.summary = match raw.as_str() {
                    "true" => Summary::True,
                    "text" => Summary::Text,
                    "data" => Summary::Data,
                    "count" => Summary::Count,
                    "false" => Summary::False,
                    other => {
                        return Err(SearchError::invalid(format!(
                            "invalid _summary value '{other}'; use true, text, data, count or false"
                        )));
                    }
                }
            }
            "_elements" => {
                req.elements = Some(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                )
            }
            "_sort" => {
                for key in raw.split(',').filter(|k| !k.is_empty()) {
                    let (code, descending) = match key.strip_prefix('-') {
                        Some(c) => (c, true),
                        None => (key, false),
                    };
                    let param = catalog.get(resource_type, code).ok_or_else(|| {
                        SearchError::invalid(format!(
                            "invalid _sort parameter '{code}': not a search parameter of {resource_type}"
                        ))
                    })?;
                    if matches!(param.param_type, ParamType::Composite) {
                        return Err(SearchError::invalid(format!(
                            "invalid _sort parameter '{code}': composite parameters are not sortable"
                        )));
                    }
                    req.sort.push(SortKey {
                        param: param.clone(),
                        descending,
                    });
                }
                if req.sort.len() > MAX_SORT_KEYS {
                    return Err(SearchError::invalid(format!(
                        "_sort has {} keys; at most {MAX_SORT_KEYS} are allowed",
                        req.sort.len()
                    )));
                }
            }
            "_include" | "_include:iterate" | "_revinclude" | "_revinclude:iterate" => {
                let include = parse_include(raw, name.ends_with(":iterate"))?;
                if name.starts_with("_include") {
                    req.includes.push(include);
                } else {
                    req.revincludes.push(include);
                }
            }
            _ => match parse_filter(resource_type, name, raw) {
                Ok(f) => req.filters.push(f),
                Err(e) if lenient && e.code != "invalid" => req.ignored.push(name.clone()),
                Err(e) => return Err(e),
            },
        }
    }
    if req.summary == Summary::Text && !(req.includes.is_empty() && req.revincludes.is_empty()) {
        return Err(SearchError::invalid(
            "_summary=text cannot be combined with _include or _revinclude",
        ));
    }
    if req.elements.is_some() && req.summary != Summary::False {
        return Err(SearchError::invalid(
            "_elements cannot be combined with _summary",
        ));
    }
    Ok(req)
}

fn resource_type_named(name: &str) -> Option<&'static str> {
    Registry::global().canonical_name(name)
}

fn parse_include(raw: &str, iterate: bool) -> Result<Include, SearchError> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (source, code, target) = match parts.as_slice() {
        [s, c] => (*s, *c, None),
        [s, c, t] => (*s, *c, Some(*t)),
        _ => {
            return Err(SearchError::invalid(format!(
                "invalid include '{raw}': expected Type:parameter[:targetType]"
            )));
        }
    };
    let source = resource_type_named(source).ok_or_else(|| {
        SearchError::invalid(format!("unknown resource type '{source}' in '{raw}'"))
    })?;
    let param = Catalog::global()
        .get(source, code)
        .filter(|p| p.param_type == ParamType::Reference)
        .ok_or_else(|| {
            SearchError::invalid(format!(
                "'{code}' is not a reference search parameter of {source}"
            ))
        })?;
    let target = target
        .map(|t| {
            resource_type_named(t).ok_or_else(|| {
                SearchError::invalid(format!("unknown resource type '{t}' in '{raw}'"))
            })
        })
        .transpose()?;
    Ok(Include {
        source,
        param: param.clone(),
        target,
        iterate,
    })
}

fn unknown(resource_type: &str, code: &str) -> SearchError {
    match Catalog::global().unsupported_reason(resource_type, code) {
        Some(reason) => SearchError::not_supported(format!(
            "search parameter '{code}' of {resource_type} is not supported: {reason}"
        )),
        None => SearchError::not_supported(format!(
            "unknown search parameter '{code}' for {resource_type}"
        )),
    }
}

/// One `name[:modifier][.chain]=value` parameter.
pub fn parse_filter(
    resource_type: &'static str,
    name: &str,
    raw: &str,
) -> Result<Filter, SearchError> {
    let catalog = Catalog::global();
    if let Some(rest) = name.strip_prefix("_has:") {
        return parse_has(resource_type, rest, raw);
    }
    if let Some((head, chain)) = name.split_once('.') {
        let (code, modifier) = split_modifier(head);
        let param = catalog
            .get(resource_type, code)
            .ok_or_else(|| unknown(resource_type, code))?;
        if param.param_type != ParamType::Reference {
            return Err(SearchError::invalid(format!(
                "'{code}' is not a reference parameter and cannot be chained"
            )));
        }
        let target = match modifier {
            Some(Modifier::Type { resource_type, .. }) => resource_type,
            Some(m) => {
                return Err(SearchError::invalid(format!(
                    "unknown resource type '{m}' in '{name}'"
                )));
            }
            None => match param.targets.as_slice() {
                [only] => resource_type_named(only)
                    .ok_or_else(|| SearchError::invalid(format!("unknown target type '{only}'")))?,
                _ => {
                    return Err(SearchError::invalid(format!(
                        "'{code}' can reference {}; name the type: {code}:Type.{chain}",
                        param.targets.join(", ")
                    )));
                }
            },
        };
        let inner = parse_filter(target, chain, raw)?;
        return Ok(Filter::Chain {
            param: param.clone(),
            target,
            inner: vec![inner],
        });
    }
    let (code, modifier) = split_modifier(name);
    if code == "_id" && modifier.is_none() {
        return Ok(Filter::Ids(
            value::split_escaped(raw, ',')
                .into_iter()
                .filter(|v| !v.is_empty())
                .collect(),
        ));
    }
    let param = catalog
        .get(resource_type, code)
        .ok_or_else(|| unknown(resource_type, code))?;
    Ok(Filter::Criterion(criterion(param, modifier, raw)?))
}

fn parse_has(resource_type: &'static str, rest: &str, raw: &str) -> Result<Filter, SearchError> {
    // _has:Observation:patient:code=1234 (the inner parameter may itself be _has:...)
    let mut parts = rest.splitn(3, ':');
    let (Some(source), Some(code), Some(inner_name)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SearchError::invalid(format!(
            "invalid _has '{rest}': expected _has:Type:reference:parameter"
        )));
    };
    let source = resource_type_named(source)
        .ok_or_else(|| SearchError::invalid(format!("unknown resource type '{source}' in _has")))?;
    let param = Catalog::global()
        .get(source, code)
        .filter(|p| p.param_type == ParamType::Reference)
        .ok_or_else(|| {
            SearchError::invalid(format!(
                "'{code}' is not a reference search parameter of {source}"
            ))
        })?;
    if !param.targets.is_empty() && !param.targets.iter().any(|t| t == resource_type) {
        return Err(SearchError::invalid(format!(
            "{source}:{code} does not reference {resource_type}"
        )));
    }
    let inner = parse_filter(source, inner_name, raw)?;
    Ok(Filter::Has {
        source,
        param: param.clone(),
        inner: vec![inner],
    })
}

/// A search modifier: the `:modifier` suffix of a parameter name (FHIR R4 search).
///
/// The suffix is parsed once, when the name is split; each parameter type then accepts the
/// modifiers it supports. Modifiers keep the text they were written with so that errors quote
/// the request as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier<'a> {
    /// `:missing=true|false`, on every parameter type but composite.
    Missing,
    /// `:exact` on strings: equal, case- and accent-sensitive.
    Exact,
    /// `:contains` on strings: anywhere in the value.
    Contains,
    /// `:text`: on strings, like `:contains`; on tokens, the display text.
    Text,
    /// `:not` on tokens: the negation of the plain search.
    Not,
    /// `:above`: on URIs, a prefix of the search value; on tokens (subsumption), unsupported.
    Above,
    /// `:below`: on URIs, starts with the search value; on tokens (subsumption), unsupported.
    Below,
    /// `:in` on tokens (value set membership): unsupported.
    In,
    /// `:not-in` on tokens (value set exclusion): unsupported.
    NotIn,
    /// `:of-type` on identifiers: `system|code|value` of the identifier's type and value.
    OfType,
    /// `:identifier` on references: the reference's logical identifier.
    Identifier,
    /// `:[type]` on references (and chains): the target's resource type, matched
    /// case-insensitively; `resource_type` is its canonical name, `written` the request's text.
    Type {
        resource_type: &'static str,
        written: &'a str,
    },
    /// Any other suffix: rejected by every parameter type, quoting it.
    Unknown(&'a str),
}

impl<'a> Modifier<'a> {
    /// The modifier a suffix names. Keywords are matched exactly; anything else is a resource
    /// type when one has that name, else [`Modifier::Unknown`].
    pub fn parse(suffix: &'a str) -> Self {
        match suffix {
            "missing" => Modifier::Missing,
            "exact" => Modifier::Exact,
            "contains" => Modifier::Contains,
            "text" => Modifier::Text,
            "not" => Modifier::Not,
            "above" => Modifier::Above,
            "below" => Modifier::Below,
            "in" => Modifier::In,
            "not-in" => Modifier::NotIn,
            "of-type" => Modifier::OfType,
            "identifier" => Modifier::Identifier,
            _ => match resource_type_named(suffix) {
                Some(resource_type) => Modifier::Type {
                    resource_type,
                    written: suffix,
                },
                None => Modifier::Unknown(suffix),
            },
        }
    }

    /// The suffix as written in the request (without the `:`).
    pub fn as_str(self) -> &'a str {
        match self {
            Modifier::Missing => "missing",
            Modifier::Exact => "exact",
            Modifier::Contains => "contains",
            Modifier::Text => "text",
            Modifier::Not => "not",
            Modifier::Above => "above",
            Modifier::Below => "below",
            Modifier::In => "in",
            Modifier::NotIn => "not-in",
            Modifier::OfType => "of-type",
            Modifier::Identifier => "identifier",
            Modifier::Type { written, .. } => written,
            Modifier::Unknown(written) => written,
        }
    }
}

impl fmt::Display for Modifier<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Splits `code[:modifier]` at the first `:`; the rest (even with more `:`s) is the modifier.
fn split_modifier(name: &str) -> (&str, Option<Modifier<'_>>) {
    match name.split_once(':') {
        Some((c, m)) => (c, Some(Modifier::parse(m))),
        None => (name, None),
    }
}

fn values(raw: &str) -> Vec<String> {
    value::split_escaped(raw, ',')
}

/// Builds the criterion of one parameter occurrence.
///
/// `:missing` is checked first, since it applies to every type and takes no search value;
/// the other modifiers are checked by the builder of the parameter's type.
pub fn criterion(
    param: &SearchParam,
    modifier: Option<Modifier<'_>>,
    raw: &str,
) -> Result<Criterion, SearchError> {
    let code = &param.code;
    if modifier == Some(Modifier::Missing) {
        return missing(param, raw);
    }
    if raw.is_empty() {
        return Err(SearchError::invalid(format!(
            "search parameter '{code}' has an empty value"
        )));
    }
    let test = match param.param_type {
        ParamType::Composite => return composite(param, modifier, raw),
        ParamType::Special => return Err(unknown("", code)),
        ParamType::String => string_test(param, modifier, raw)?,
        ParamType::Token => token_test(param, modifier, raw)?,
        ParamType::Reference => reference_test(param, modifier, raw)?,
        ParamType::Date => date_test(param, modifier, raw)?,
        ParamType::Number => number_test(param, modifier, raw)?,
        ParamType::Quantity => quantity_test(param, modifier, raw)?,
        ParamType::Uri => uri_test(param, modifier, raw)?,
    };
    Ok(Criterion::Paths {
        paths: param.paths.clone(),
        test,
        // Only token parameters accept `:not`; every other type has rejected it by now.
        negate: modifier == Some(Modifier::Not),
    })
}

/// `code:missing=true|false`: whether any path has a value, negated for `true`.
fn missing(param: &SearchParam, raw: &str) -> Result<Criterion, SearchError> {
    let code = &param.code;
    let missing = match raw {
        "true" => true,
        "false" => false,
        _ => {
            return Err(SearchError::invalid(format!(
                "{code}:missing takes true or false, got '{raw}'"
            )));
        }
    };
    if param.param_type == ParamType::Composite {
        return Err(SearchError::invalid(format!(
            ":missing is not allowed on composite parameter '{code}'"
        )));
    }
    Ok(Criterion::Paths {
        paths: param.paths.clone(),
        test: Test::Exists,
        negate: missing,
    })
}

/// The error for a modifier `param`'s type does not take.
fn bad_modifier(param: &SearchParam, m: Modifier<'_>) -> SearchError {
    SearchError::invalid(format!(
        "modifier ':{m}' is not valid for {} parameter '{}'",
        param.param_type.as_str(),
        param.code
    ))
}

/// Rejects any modifier, for the types that take none (date, number, quantity, composite).
fn no_modifier(param: &SearchParam, modifier: Option<Modifier<'_>>) -> Result<(), SearchError> {
    match modifier {
        Some(m) => Err(bad_modifier(param, m)),
        None => Ok(()),
    }
}

/// A string search: a folded prefix by default, folded anywhere with `:contains`/`:text`, or
/// the value as given with `:exact` (the only mode that keeps case and accents).
fn string_test(
    param: &SearchParam,
    modifier: Option<Modifier<'_>>,
    raw: &str,
) -> Result<Test, SearchError> {
    let code = &param.code;
    let mode = match modifier {
        // Full-text parameters match anywhere in the narrative or resource.
        None if code == "_text" || code == "_content" => StringMode::Contains,
        None => StringMode::Prefix,
        Some(Modifier::Exact) => StringMode::Exact,
        Some(Modifier::Contains | Modifier::Text) => StringMode::Contains,
        Some(m) => return Err(bad_modifier(param, m)),
    };
    let values = values(raw)
        .into_iter()
        .map(|v| {
            if mode == StringMode::Exact {
                v
            } else {
                value::fold(&v)
            }
        })
        .collect();
    Ok(Test::String { values, mode })
}

/// A token search: `[system|]code` (also under `:not`, which [`criterion`] negates), display
/// text with `:text`, or an identifier's type and value with `:of-type`. The terminology
/// modifiers are refused as not supported rather than invalid, so lenient requests ignore them.
fn token_test(
    param: &SearchParam,
    modifier: Option<Modifier<'_>>,
    raw: &str,
) -> Result<Test, SearchError> {
    let code = &param.code;
    Ok(match modifier {
        None | Some(Modifier::Not) => Test::Token(values(raw).iter().map(|v| token(v)).collect()),
        Some(Modifier::Text) => {
            Test::TokenText(values(raw).iter().map(|v| value::fold(v)).collect())
        }
        Some(Modifier::OfType) => Test::OfType(
            values(raw)
                .iter()
                .map(|v| of_type(code, v))
                .collect::<Result<_, _>>()?,
        ),
        Some(m @ (Modifier::In | Modifier::NotIn | Modifier::Above | Modifier::Below)) => {
            return Err(SearchError::not_supported(format!(
                "modifier ':{m}' on token parameter '{code}' needs terminology services, which are not supported"
            )));
        }
        Some(m) => return Err(bad_modifier(param, m)),
    })
}

/// One `:of-type` value: `system|code|value`, all three required.
fn of_type(code: &str, v: &str) -> Result<OfType, SearchError> {
    let parts = value::split_escaped(v, '|');
    match parts.as_slice() {
        [s, c, val] => Ok(OfType {
            system: s.clone(),
            code: c.clone(),
            value: val.clone(),
        }),
        _ => Err(SearchError::invalid(format!(
            "{code}:of-type takes system|code|value, got '{v}'"
        ))),
    }
}

/// A reference search: by `[Type/]id` (the type given by `:[type]` when the value has none),
/// or by the reference's identifier with `:identifier`.
fn reference_test(
    param: &SearchParam,
    modifier: Option<Modifier<'_>>,
    raw: &str,
) -> Result<Test, SearchError> {
    let type_modifier = match modifier {
        Some(Modifier::Identifier) => {
            return Ok(Test::ReferenceIdentifier(
                values(raw).iter().map(|v| token(v)).collect(),
            ));
        }
        None => None,
        Some(Modifier::Type { resource_type, .. }) => Some(resource_type),
        Some(m) => return Err(bad_modifier(param, m)),
    };
    Ok(Test::Reference(
        values(raw)
            .iter()
            .map(|v| reference(param, type_modifier, v))
            .collect(),
    ))
}

/// A date search: `[prefix]date` values, each the range its precision denotes. No modifiers.
fn date_test(
    param: &SearchParam,
    modifier: Option<Modifier<'_>>,
    raw: &str,
) -> Result<Test, SearchError> {
    no_modifier(param, modifier)?;
    let code = &param.code;
    Ok(Test::Date(prefixed(
        raw,
        value::date_range,
        || format!("for '{code}': use [prefix]yyyy[-mm[-dd[Thh:mm[:ss][zone]]]]"),
        "date",
    )?))
}

/// A number search: `[prefix]number` values, each the range its implicit precision denotes.
/// No modifiers.
fn number_test(
    param: &SearchParam,
    modifier: Option<Modifier<'_>>,
    raw: &str,
) -> Result<Test, SearchError> {
    no_modifier(param, modifier)?;
    let code = &param.code;
    Ok(Test::Number(prefixed(
        raw,
        value::number_range,
        || format!("for '{code}'"),
        "number",
    )?))
}

/// A quantity search: `[prefix]number[|system|code]` values. No modifiers.
fn quantity_test(
    param: &SearchParam,
    modifier: Option<Modifier<'_>>,
    raw: &str,
) -> Result<Test, SearchError> {
    no_modifier(param, modifier)?;
    Ok(Test::Quantity(
        values(raw)
            .iter()
            .map(|v| quantity(&param.code, v))
            .collect::<Result<_, _>>()?,
    ))
}

/// A URI search: equal by default, or a hierarchy of paths with `:below`/`:above`.
fn uri_test(
    param: &SearchParam,
    modifier: Option<Modifier<'_>>,
    raw: &str,
) -> Result<Test, SearchError> {
    let mode = match modifier {
        None => UriMode::Exact,
        Some(Modifier::Below) => UriMode::Below,
        Some(Modifier::Above) => UriMode::Above,
        Some(m) => return Err(bad_modifier(param, m)),
    };
    Ok(Test::Uri {
        values: values(raw),
        mode,
    })
}

/// Comma-separated `[prefix]value` search values, each parsed into its range.
fn prefixed<T>(
    raw: &str,
    parse: impl Fn(&str) -> Option<(T, T)>,
    hint: impl Fn() -> String,
    kind: &str,
) -> Result<Vec<(Prefix, T, T)>, SearchError> {
    values(raw)
        .iter()
        .map(|v| {
            let (prefix, rest) = Prefix::split(v);
            let (lo, hi) = parse(rest)
                .ok_or_else(|| SearchError::invalid(format!("invalid {kind} '{v}' {}", hint())))?;
            Ok((prefix, lo, hi))
        })
        .collect()
}

fn token(v: &str) -> Token {
    match value::split_once_escaped(v, '|') {
        Some((system, code)) => Token {
            system: Some(system),
            code: (!code.is_empty()).then_some(code),
        },
        None => Token {
            system: None,
            code: Some(v.to_string()),
        },
    }
}

fn reference(
    param: &SearchParam,
    type_modifier: Option<&'static str>,
    v: &str,
) -> (Option<String>, String) {
    if let Some((ty, id)) = value::reference_key(v) {
        return (Some(ty.to_string()), id.to_string());
    }
    let ty = type_modifier
        .map(String::from)
        .or_else(|| match param.targets.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        });
    (ty, v.to_string())
}

fn quantity(code: &str, v: &str) -> Result<QuantityValue, SearchError> {
    let parts = value::split_escaped(v, '|');
    let (prefix, number) = Prefix::split(&parts[0]);
    let (lo, hi) = value::number_range(number).ok_or_else(|| {
        SearchError::invalid(format!(
            "invalid quantity '{v}' for '{code}': use [prefix]number[|system|code]"
        ))
    })?;
    let non_empty = |s: Option<&String>| s.filter(|s| !s.is_empty()).cloned();
    Ok(QuantityValue {
        prefix,
        lo,
        hi,
        system: non_empty(parts.get(1)),
        code: non_empty(parts.get(2)),
    })
}

/// A composite search: `$`-separated component values that must all match within one
/// element of the parameter's base (or the row), built from one sub-criterion per component.
fn composite(
    param: &SearchParam,
    modifier: Option<Modifier<'_>>,
    raw: &str,
) -> Result<Criterion, SearchError> {
    no_modifier(param, modifier)?;
    let base = param.paths.first().cloned();
    let mut any = Vec::new();
    for v in values(raw) {
        let parts = value::split_escaped(&v, '$');
        if parts.len() != param.components.len() {
            return Err(SearchError::invalid(format!(
                "composite parameter '{}' takes {} '$'-separated values, got '{v}'",
                param.code,
                param.components.len()
            )));
        }
        let mut components = Vec::new();
        for (component, part) in param.components.iter().zip(parts) {
            let sub = SearchParam {
                id: param.id.clone(),
                code: component.code.clone(),
                param_type: component.param_type,
                expression: String::new(),
                paths: component.paths.clone(),
                targets: Vec::new(),
                components: Vec::new(),
            };
            // Escape the part again: `criterion` splits values on commas.
            let escaped = part.replace('\\', "\\\\").replace(',', "\\,");
            match criterion(&sub, None, &escaped)? {
                Criterion::Paths { paths, test, .. } => components.push((paths, test)),
                _ => unreachable!("component parameters are not composite"),
            }
        }
        any.push(Criterion::Composite {
            base: base.clone(),
            components,
        });
    }
    Ok(if any.len() == 1 {
        any.pop().unwrap()
    } else {
        Criterion::Any(any)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYWORDS: [&str; 11] = [
        "missing",
        "exact",
        "contains",
        "text",
        "not",
        "above",
        "below",
        "in",
        "not-in",
        "of-type",
        "identifier",
    ];

    /// Keywords are matched before resource types, so no resource type may share a keyword's
    /// name (case-insensitively) or its `:[type]` modifier would be read as the keyword.
    #[test]
    fn modifier_keywords_are_not_resource_types() {
        for k in KEYWORDS {
            assert!(resource_type_named(k).is_none(), "{k}");
            assert!(!matches!(
                Modifier::parse(k),
                Modifier::Type { .. } | Modifier::Unknown(_)
            ));
        }
    }

    #[test]
    fn modifiers_keep_the_text_they_were_written_with() {
        for s in KEYWORDS
            .into_iter()
            .chain(["patient", "Foo", "", "not:x", "Exact"])
        {
            assert_eq!(Modifier::parse(s).to_string(), s);
        }
        assert_eq!(
            Modifier::parse("patient"),
            Modifier::Type {
                resource_type: "Patient",
                written: "patient"
            }
        );
        assert_eq!(Modifier::parse("Exact"), Modifier::Unknown("Exact"));
    }

    #[test]
    fn modifier_errors_name_the_modifier_and_the_parameter_type() {
        let err = |ty, name, raw| parse_filter(ty, name, raw).unwrap_err();
        let e = err("Patient", "family:foo", "x");
        assert_eq!(e.code, "invalid");
        assert_eq!(
            e.message,
            "modifier ':foo' is not valid for string parameter 'family'"
        );
        assert_eq!(
            err("Patient", "birthdate:patient", "2020").message,
            "modifier ':patient' is not valid for date parameter 'birthdate'"
        );
        let e = err("Observation", "code:not-in", "x");
        assert_eq!(e.code, "not-supported");
        assert_eq!(
            e.message,
            "modifier ':not-in' on token parameter 'code' needs terminology services, which are not supported"
        );
        assert_eq!(
            err("Observation", "subject:text.family", "x").message,
            "unknown resource type 'text' in 'subject:text.family'"
        );
    }
}
