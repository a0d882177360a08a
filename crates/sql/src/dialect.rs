//! Athena/Trino SQL as DataFusion plans it.
//!
//! Statements are parsed with DataFusion's parser (generic dialect, which accepts the guide's
//! queries), checked to be read-only, and rewritten where Trino syntax means something
//! DataFusion's planner does not accept:
//!
//! * Field access after a subscript (`name[1].family`, `component[2].valuequantity.value`,
//!   `name [ 1 ].given [ 1 ]`). DataFusion only plans a dot access after `[..]` when the field
//!   is a string literal, so such identifiers become literals holding the name as DataFusion
//!   would normalize it (unquoted: lower-cased; quoted: exact). Arrays stay 1-based, as in
//!   Trino, because DataFusion's `array_element` is 1-based too.
//!
//! * Output names. Trino names an unaliased field access after its last field
//!   (`name[1].family` is `family`) and any other unaliased expression `_col<position>`
//!   (`_col0`, counting from zero); plain column references keep their name. DataFusion would
//!   name them after the expression text (`patient.name[Int64(1)][family]`), so such items
//!   get Trino's name as an alias.
//! * Repeated output names. Trino allows `SELECT a AS x, b AS x` (the guide's Q16 repeats
//!   `categoryCode`); DataFusion requires unique names, so the second and later uses of an
//!   alias get a suffix: `x`, `x_2`, `x_3`.
//!
//! Other Trino semantics (casts of doubles and JSON, `CONCAT` with nulls) are handled on the
//! logical plan by [`super::functions`], where argument types are known.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    AccessExpr, Expr, Ident, Query, SelectItem, SetExpr, Statement, Value, VisitMut, VisitorMut,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::ParserError;

use super::SqlError;

/// Parses `sql` as exactly one read-only statement and rewrites it for DataFusion.
pub fn parse(sql: &str) -> Result<DFStatement, SqlError> {
    let mut statements =
        DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(syntax_error)?;
    if statements.len() != 1 {
        return Err(SqlError::StatementCount(statements.len()));
    }
    let mut statement = statements.pop_front().ok_or(SqlError::StatementCount(0))?;
    check_read_only(&statement)?;
    rewrite(&mut statement);
    Ok(statement)
}

fn syntax_error(error: DataFusionError) -> SqlError {
    match error {
        DataFusionError::SQL(e, _) => SqlError::Syntax(match *e {
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => m,
            ParserError::RecursionLimitExceeded => "the statement is nested too deeply".into(),
        }),
        other => SqlError::Syntax(other.strip_backtrace()),
    }
}

/// Refuses everything but queries: `SELECT`/`WITH`/`VALUES`, `EXPLAIN` of a query, and the
/// catalog look-ups `SHOW TABLES`, `SHOW COLUMNS`, `SHOW FUNCTIONS`, `SHOW <variable>` and
/// `DESCRIBE`.
///
/// HealthLake's Athena tables are read-only: every change goes through the FHIR API or an
/// import, which keep versions, history and search indexes consistent.
pub fn check_read_only(statement: &DFStatement) -> Result<(), SqlError> {
    match statement {
        DFStatement::Statement(s) => match s.as_ref() {
            Statement::Query(query) if creates_table(&query.body) => {
                Err(SqlError::ReadOnly("SELECT INTO".to_string()))
            }
            Statement::Query(_)
            | Statement::ExplainTable { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowFunctions { .. }
            | Statement::ShowVariable { .. } => Ok(()),
            Statement::Explain { statement, .. } => {
                check_read_only(&DFStatement::Statement(statement.clone()))
            }
            other => Err(SqlError::ReadOnly(statement_kind(&other.to_string()))),
        },
        DFStatement::Explain(explain) => check_read_only(&explain.statement),
        other => Err(SqlError::ReadOnly(statement_kind(&other.to_string()))),
    }
}

/// True for `SELECT ... INTO table`, which creates a table.
fn creates_table(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => select.into.is_some(),
        SetExpr::SetOperation { left, right, .. } => creates_table(left) || creates_table(right),
        SetExpr::Query(query) => creates_table(&query.body),
        _ => false,
    }
}

/// The leading keywords of a statement's text, naming what kind of statement it is
/// (`INSERT`, `CREATE OR REPLACE VIEW`, `DROP TABLE`).
fn statement_kind(text: &str) -> String {
    const MODIFIERS: &[&str] = &[
        "OR",
        "REPLACE",
        "TEMPORARY",
        "TEMP",
        "EXTERNAL",
        "MATERIALIZED",
        "UNLOGGED",
        "GLOBAL",
        "LOCAL",
        "UNIQUE",
    ];
    let mut words = text.split_whitespace().map(|w| w.to_ascii_uppercase());
    let Some(first) = words.next() else {
        return "an empty statement".to_string();
    };
    let mut kind = vec![first.clone()];
    if matches!(first.as_str(), "CREATE" | "DROP" | "ALTER" | "START") {
        for word in words {
            let stop = !MODIFIERS.contains(&word.as_str());
            if !word.chars().all(|c| c.is_ascii_alphabetic()) {
                break;
            }
            kind.push(word);
            if stop {
                break;
            }
        }
    }
    kind.join(" ")
}

/// Rewrites Trino syntax that DataFusion cannot plan as written (see the module docs).
pub fn rewrite(statement: &mut DFStatement) {
    match statement {
        DFStatement::Statement(s) => rewrite_sql_statement(s),
        DFStatement::Explain(explain) => rewrite(&mut explain.statement),
        // Refused by `check_read_only`; nothing to rewrite.
        DFStatement::CreateExternalTable(_) | DFStatement::CopyTo(_) | DFStatement::Reset(_) => {}
    }
}

fn rewrite_sql_statement(statement: &mut Statement) {
    let mut placeholders = 0;
    let _ = visit_expressions_mut(statement, |expr| {
        rewrite_field_access(expr);
        number_placeholder(expr, &mut placeholders);
        ControlFlow::<()>::Continue(())
    });
    let _ = statement.visit(&mut OutputNames);
}

/// Turns JDBC/Trino-style positional parameters (`?`) into DataFusion's numbered ones
/// (`$1`, `$2`, … in the order they appear), so prepared statements from Flight SQL clients
/// bind their parameters by position.
fn number_placeholder(expr: &mut Expr, count: &mut usize) {
    if let Expr::Value(v) = expr
        && let Value::Placeholder(p) = &mut v.value
        && p == "?"
    {
        *count += 1;
        *p = format!("${count}");
    }
}

/// Gives every `SELECT` Trino's output names and makes repeated ones unique (see the
/// module docs).
struct OutputNames;

impl VisitorMut for OutputNames {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        name_outputs_in(&mut query.body);
        ControlFlow::Continue(())
    }
}

/// Trino's name for an unaliased select item, or `None` to keep DataFusion's (plain column
/// names).
fn trino_output_name(expr: &Expr, position: usize) -> Option<String> {
    match expr {
        Expr::Identifier(_) => None,
        // `table.column` and `column.field` alike are named after the last part.
        Expr::CompoundIdentifier(parts) => parts.last().map(normalized),
        Expr::CompoundFieldAccess { access_chain, .. } => match access_chain.last() {
            Some(AccessExpr::Dot(Expr::Identifier(ident))) => Some(normalized(ident)),
            Some(AccessExpr::Dot(Expr::Value(v))) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
                _ => Some(format!("_col{position}")),
            },
            _ => Some(format!("_col{position}")),
        },
        _ => Some(format!("_col{position}")),
    }
}

fn name_outputs_in(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            for (position, item) in select.projection.iter_mut().enumerate() {
                if let SelectItem::UnnamedExpr(expr) = item
                    && let Some(name) = trino_output_name(expr, position)
                {
                    *item = SelectItem::ExprWithAlias {
                        expr: expr.clone(),
                        alias: Ident::with_quote('"', name),
                    };
                }
            }
            let taken: HashSet<String> = select
                .projection
                .iter()
                .filter_map(|item| match item {
                    SelectItem::ExprWithAlias { alias, .. } => Some(normalized(alias)),
                    _ => None,
                })
                .collect();
            let mut seen = HashSet::new();
            for item in &mut select.projection {
                let SelectItem::ExprWithAlias { alias, .. } = item else {
                    continue;
                };
                let name = normalized(alias);
                if seen.insert(name.clone()) {
                    continue;
                }
                let mut n = 2;
                let unique = loop {
                    let candidate = format!("{name}_{n}");
                    if !taken.contains(&candidate) && !seen.contains(&candidate) {
                        break candidate;
                    }
                    n += 1;
                };
                seen.insert(unique.clone());
                *alias = Ident::with_quote('"', unique);
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            name_outputs_in(left);
            name_outputs_in(right);
        }
        // Nested queries are visited on their own.
        _ => {}
    }
}

/// Turns identifiers accessed after a subscript into string literals (see the module docs).
fn rewrite_field_access(expr: &mut Expr) {
    let Expr::CompoundFieldAccess { root, access_chain } = expr else {
        return;
    };
    // DataFusion treats a leading run of `.ident` after a plain identifier as a compound
    // column name (`condition.code.coding`); everything after the first non-identifier step,
    // or after a root that is not an identifier, is a field access needing a literal name.
    let mut field_access = !matches!(root.as_ref(), Expr::Identifier(_));
    for access in access_chain.iter_mut() {
        match access {
            AccessExpr::Subscript(_) => field_access = true,
            AccessExpr::Dot(Expr::Identifier(ident)) if field_access => {
                *access = AccessExpr::Dot(Expr::Value(
                    Value::SingleQuotedString(normalized(ident)).with_empty_span(),
                ));
            }
            AccessExpr::Dot(_) => {}
        }
    }
}

/// The name an identifier denotes, as DataFusion's identifier normalization would have it.
fn normalized(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => super::lowercase::fold_name(&ident.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        parse(sql).unwrap().to_string()
    }

    #[test]
    fn positional_parameters_are_numbered_in_order() {
        assert_eq!(
            rewritten("SELECT id AS i FROM patient WHERE gender = ? AND year(date(birthdate)) > ?"),
            "SELECT id AS i FROM patient WHERE gender = $1 AND year(date(birthdate)) > $2"
        );
        // Numbered parameters are left alone.
        assert_eq!(
            rewritten("SELECT id AS i FROM patient WHERE gender = $1"),
            "SELECT id AS i FROM patient WHERE gender = $1"
        );
    }

    #[test]
    fn field_access_after_subscript_becomes_literal() {
        assert_eq!(
            rewritten("SELECT name[1].family AS f FROM patient"),
            "SELECT name[1].'family' AS f FROM patient"
        );
        assert_eq!(
            rewritten("SELECT name [ 1 ].given [ 1 ] AS g FROM patient"),
            "SELECT name[1].'given'[1] AS g FROM patient"
        );
        assert_eq!(
            rewritten("SELECT condition.code.coding[1].Code AS c FROM condition"),
            "SELECT condition.code.coding[1].'code' AS c FROM condition"
        );
        assert_eq!(
            rewritten("SELECT component[2].valuequantity.value AS v FROM observation"),
            "SELECT component[2].'valuequantity'.'value' AS v FROM observation"
        );
        assert_eq!(
            rewritten(r#"SELECT x[1]."Exact" AS e FROM t"#),
            "SELECT x[1].'Exact' AS e FROM t"
        );
        // Nothing to do without a subscript, or with a subscript last.
        assert_eq!(
            rewritten("SELECT maritalstatus.text AS t, meta.tag[1] AS m FROM patient"),
            "SELECT maritalstatus.text AS t, meta.tag[1] AS m FROM patient"
        );
    }

    #[test]
    fn unaliased_items_get_trinos_names() {
        assert_eq!(
            rewritten(
                "SELECT id, patient.gender, name[1].family, maritalstatus.text, name[1], \
                 year(date(birthdate)), *, x[1].\"Exact\" FROM patient"
            ),
            "SELECT id, patient.gender AS \"gender\", name[1].'family' AS \"family\", maritalstatus.text AS \"text\", \
             name[1] AS \"_col4\", year(date(birthdate)) AS \"_col5\", *, x[1].'Exact' AS \"Exact\" \
             FROM patient"
        );
    }

    #[test]
    fn rewrites_reach_nested_expressions() {
        let sql = rewritten(
            "SELECT CASE WHEN component[1] IS NOT NULL THEN CAST(component[2].valuequantity.value AS VARCHAR) END \
             FROM observation WHERE EXISTS (SELECT 1 FROM patient WHERE name[1].family = 'x')",
        );
        assert!(
            sql.contains("component[2].'valuequantity'.'value' AS VARCHAR"),
            "{sql}"
        );
        assert!(sql.contains("name[1].'family' = 'x'"), "{sql}");
    }

    #[test]
    fn repeated_aliases_get_suffixes() {
        assert_eq!(
            rewritten(
                "SELECT a AS categoryCode, b AS CategoryCode, c AS categorycode_2, d AS x, x.y[1].z, t.z[2].z FROM t"
            ),
            "SELECT a AS categoryCode, b AS \"categorycode_3\", c AS categorycode_2, d AS x, \
             x.y[1].'z' AS \"z\", t.z[2].'z' AS \"z_2\" FROM t"
        );
        let sql =
            rewritten("SELECT 1 AS x, 2 AS x UNION ALL SELECT * FROM (SELECT 3 AS y, 4 AS y)");
        assert!(sql.contains("2 AS \"x_2\""), "{sql}");
        assert!(sql.contains("4 AS \"y_2\""), "{sql}");
    }

    #[test]
    fn writes_are_refused_by_kind() {
        let cases = [
            ("INSERT INTO patient VALUES (1)", "INSERT"),
            ("UPDATE patient SET gender = 'x'", "UPDATE"),
            ("DELETE FROM patient", "DELETE"),
            ("CREATE TABLE t (a INT)", "CREATE TABLE"),
            (
                "CREATE OR REPLACE VIEW v AS SELECT 1",
                "CREATE OR REPLACE VIEW",
            ),
            (
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/tmp/x'",
                "CREATE EXTERNAL TABLE",
            ),
            ("DROP TABLE patient", "DROP TABLE"),
            ("ALTER TABLE patient ADD COLUMN x INT", "ALTER TABLE"),
            ("COPY patient TO '/tmp/x.csv'", "COPY"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("EXPLAIN INSERT INTO patient VALUES (1)", "INSERT"),
            ("TRUNCATE TABLE patient", "TRUNCATE"),
            ("SELECT * INTO copy FROM patient", "SELECT INTO"),
        ];
        for (sql, kind) in cases {
            let err = parse(sql).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "fhirlake SQL is read-only: {kind} is not allowed; write through the FHIR API or an import"
                ),
                "{sql}"
            );
        }
    }

    #[test]
    fn queries_and_lookups_are_allowed() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
            "VALUES (1), (2)",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            "DESCRIBE patient",
            "SELECT 1;",
        ] {
            parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn statement_count_and_syntax_errors_are_named() {
        assert_eq!(
            parse("SELECT 1; SELECT 2").unwrap_err().to_string(),
            "expected exactly one SQL statement, found 2"
        );
        let err = parse("SELECT * FROM patient WHERE gender = = 'x'")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("SQL syntax error: "), "{err}");
        assert!(err.contains("Line: 1, Column:"), "{err}");
    }
}
