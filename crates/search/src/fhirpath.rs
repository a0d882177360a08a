//! The FHIRPath subset that R4 search parameter expressions use.
//!
//! Search expressions are path navigations, not programs: a union (`|`) of paths made of
//! element names, `ofType(T)` / `as T` choice selection, `where(resolve() is T)` reference
//! target filters and `where(element='value')` sibling filters. Parsing them into that shape
//! (instead of evaluating general FHIRPath) lets each path be compiled once to columns of the
//! lake tables. Anything outside the subset is a parse error, and the parameter is listed as
//! unsupported.

use std::fmt;

/// One navigation step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A child element by name (`code`, `value`).
    Name(String),
    /// `ofType(T)` or `as T`: keep values of FHIR type `T` (selects a choice variant).
    OfType(String),
    /// `where(resolve() is T)`: keep references that point at resource type `T`.
    Resolves(String),
    /// `where(element='value')`: keep elements whose `element` equals `value`.
    WhereEq { element: String, value: String },
}

/// A parse failure, naming the construct outside the subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `expression` into its union alternatives, each a list of segments starting with the
/// resource (or base) type name.
pub fn parse(expression: &str) -> Result<Vec<Vec<Segment>>, ParseError> {
    let mut parser = Parser {
        chars: expression.chars().collect(),
        pos: 0,
    };
    let paths = parser.union()?;
    parser.skip_ws();
    if parser.pos != parser.chars.len() {
        return Err(parser.error("unexpected text"));
    }
    Ok(paths)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn error(&self, what: &str) -> ParseError {
        let rest: String = self.chars[self.pos.min(self.chars.len())..]
            .iter()
            .collect();
        ParseError(format!("{what} at '{rest}'"))
    }

    fn skip_ws(&mut self) {
        while self.pos < self.chars.len() && self.chars[self.pos].is_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected '{c}'")))
        }
    }

    fn ident(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let start = self.pos;
        while self.pos < self.chars.len()
            && (self.chars[self.pos].is_ascii_alphanumeric() || self.chars[self.pos] == '_')
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.error("expected a name"));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    /// A keyword operator (`as`, `is`) followed by whitespace.
    fn keyword(&mut self, word: &str) -> bool {
        self.skip_ws();
        let end = self.pos + word.len();
        if end < self.chars.len()
            && self.chars[self.pos..end].iter().copied().eq(word.chars())
            && self.chars[end].is_whitespace()
        {
            self.pos = end;
            true
        } else {
            false
        }
    }

    fn string_literal(&mut self) -> Result<String, ParseError> {
        self.expect('\'')?;
        let start = self.pos;
        while self.pos < self.chars.len() && self.chars[self.pos] != '\'' {
            self.pos += 1;
        }
        let value = self.chars[start..self.pos].iter().collect();
        self.expect('\'')?;
        Ok(value)
    }

    fn union(&mut self) -> Result<Vec<Vec<Segment>>, ParseError> {
        let mut paths = self.path()?;
        while self.eat('|') {
            paths.extend(self.path()?);
        }
        Ok(paths)
    }

    /// A primary (name or parenthesised union) followed by postfix navigation, applied to
    /// every alternative of the primary.
    fn path(&mut self) -> Result<Vec<Vec<Segment>>, ParseError> {
        let mut paths = if self.eat('(') {
            let inner = self.union()?;
            self.expect(')')?;
            inner
        } else {
            vec![vec![Segment::Name(self.ident()?)]]
        };
        loop {
            let segment = if self.eat('.') {
                let name = self.ident()?;
                if self.eat('(') {
                    let segment = self.function(&name)?;
                    self.expect(')')?;
                    segment
                } else {
                    Segment::Name(name)
                }
            } else if self.keyword("as") {
                Segment::OfType(self.ident()?)
            } else if self.peek() == Some('[') {
                return Err(self.error("indexing is not supported"));
            } else {
                break;
            };
            for path in &mut paths {
                path.push(segment.clone());
            }
        }
        Ok(paths)
    }

    fn function(&mut self, name: &str) -> Result<Segment, ParseError> {
        match name {
            "ofType" => Ok(Segment::OfType(self.ident()?)),
            "where" => {
                let first = self.ident()?;
                if first == "resolve" {
                    self.expect('(')?;
                    self.expect(')')?;
                    if !self.keyword("is") {
                        return Err(self.error("expected 'is'"));
                    }
                    Ok(Segment::Resolves(self.ident()?))
                } else {
                    self.expect('=')?;
                    let value = self.string_literal()?;
                    Ok(Segment::WhereEq {
                        element: first,
                        value,
                    })
                }
            }
            other => Err(self.error(&format!("function {other}() is not supported"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &[Segment]) -> String {
        p.iter()
            .map(|s| match s {
                Segment::Name(n) => n.clone(),
                Segment::OfType(t) => format!("ofType({t})"),
                Segment::Resolves(t) => format!("resolves({t})"),
                Segment::WhereEq { element, value } => format!("where({element}={value})"),
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    #[test]
    fn unions_parentheses_and_postfix_distribute() {
        let paths = parse(
            "(Observation.value.ofType(string)) | (Observation.value.ofType(CodeableConcept)).text",
        )
        .unwrap();
        let got: Vec<_> = paths.iter().map(|p| names(p)).collect();
        assert_eq!(
            got,
            [
                "Observation.value.ofType(string)",
                "Observation.value.ofType(CodeableConcept).text"
            ]
        );
        let paths = parse("(A.b | A.c).d").unwrap();
        let got: Vec<_> = paths.iter().map(|p| names(p)).collect();
        assert_eq!(got, ["A.b.d", "A.c.d"]);
    }

    #[test]
    fn where_forms() {
        let p = parse("Account.subject.where(resolve() is Patient)").unwrap();
        assert_eq!(names(&p[0]), "Account.subject.resolves(Patient)");
        let p = parse("Library.relatedArtifact.where(type='composed-of').resource").unwrap();
        assert_eq!(
            names(&p[0]),
            "Library.relatedArtifact.where(type=composed-of).resource"
        );
        let p = parse("Observation.value as Quantity").unwrap();
        assert_eq!(names(&p[0]), "Observation.value.ofType(Quantity)");
    }

    #[test]
    fn outside_the_subset_is_an_error() {
        assert!(parse("Bundle.entry[0].resource").is_err());
        assert!(parse("Patient.deceased.exists() and Patient.deceased != false").is_err());
        assert!(parse("Patient.name.first()").is_err());
    }
}
