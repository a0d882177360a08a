//! SMART App Launch scopes (v1 and v2), parsed from an OAuth2 `scope` string or a `scp` claim
//! and asked what they grant.
//!
//! Resource scopes read `level/Type.actions[?constraints]`: v1 actions are `read`, `write` or
//! `*` (HealthLake's grammar), v2 actions are the letters `cruds`. Parsing never fails, because
//! a token is authorised by what it grants, not rejected for what it also carries: a token the
//! server does not understand lands in [`ScopeSet::other`] and grants nothing. Granular v2
//! constraints (`?category=laboratory`) are kept but not enforced, so a constrained scope grants
//! nothing either; granting it in full would widen access beyond what the user consented to.

use std::fmt;

/// Who a resource scope speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// `patient/`: the patient in the launch context and what belongs to them.
    Patient,
    /// `user/`: whatever the signed-in user may see.
    User,
    /// `system/`: a backend service acting for itself, no user present.
    System,
}

impl Level {
    /// The scope prefix word (`patient`, `user`, `system`), e.g. for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Patient => "patient",
            Level::User => "user",
            Level::System => "system",
        }
    }

    /// Only the lowercase words are levels; `Patient/...` is a malformed scope, not a level.
    fn parse(word: &str) -> Option<Level> {
        match word {
            "patient" => Some(Level::Patient),
            "user" => Some(Level::User),
            "system" => Some(Level::System),
            _ => None,
        }
    }
}

/// One FHIR interaction class a scope can grant (SMART v2's c r u d s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Action {
    /// Every action, in SMART v2 letter order (`cruds`).
    pub const ALL: [Action; 5] = [
        Action::Create,
        Action::Read,
        Action::Update,
        Action::Delete,
        Action::Search,
    ];

    /// The SMART v2 letter.
    pub fn letter(self) -> char {
        match self {
            Action::Create => 'c',
            Action::Read => 'r',
            Action::Update => 'u',
            Action::Delete => 'd',
            Action::Search => 's',
        }
    }

    /// Position in `cruds`, which is also the bit in [`Actions`].
    fn index(self) -> u8 {
        self as u8
    }

    fn from_letter(letter: char) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.letter() == letter)
    }
}

/// A set of [`Action`]s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(u8);

impl Actions {
    /// No action.
    pub const EMPTY: Actions = Actions(0);
    /// All five actions (v1 `*`, v2 `cruds`).
    pub const ALL: Actions = Actions(0b1_1111);
    /// What v1 `read` means in v2 terms: read and search.
    pub const READ: Actions = Actions(1 << 1 | 1 << 4);
    /// What v1 `write` means in v2 terms: create, update and delete.
    pub const WRITE: Actions = Actions(1 | 1 << 2 | 1 << 3);

    /// The set holding just `action`.
    pub fn only(action: Action) -> Actions {
        Actions(1 << action.index())
    }

    pub fn contains(self, action: Action) -> bool {
        self.0 & Actions::only(action).0 != 0
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The actions in the set, in `cruds` order.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// The action part of a resource scope: v1 `read` / `write` / `*`, else v2 letters.
    pub fn parse(text: &str) -> Option<Actions> {
        match text {
            "read" => Some(Actions::READ),
            "write" => Some(Actions::WRITE),
            "*" => Some(Actions::ALL),
            _ => Actions::parse_letters(text),
        }
    }

    /// v2 letters: non-empty, each at most once and in `cruds` order, as the spec requires so
    /// that one set of actions has exactly one spelling (`sr` and `rr` are malformed).
    fn parse_letters(text: &str) -> Option<Actions> {
        let mut set = Actions::EMPTY;
        let mut last: Option<u8> = None;
        for letter in text.chars() {
            let action = Action::from_letter(letter)?;
            if last.is_some_and(|l| l >= action.index()) {
                return None;
            }
            last = Some(action.index());
            set = set.union(Actions::only(action));
        }
        (!set.is_empty()).then_some(set)
    }
}

/// Shows the v2 letters (`Actions(rs)`), which reads better in logs and test failures than bits.
impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letters: String = self.iter().map(Action::letter).collect();
        write!(f, "Actions({letters})")
    }
}

/// One well-formed resource scope, e.g. `patient/Observation.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    pub level: Level,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    pub actions: Actions,
    /// SMART v2 granular constraints after `?` (e.g. `category=laboratory`), decoded pairs.
    /// This server does not enforce them, so a constrained scope grants nothing (see
    /// [`ScopeSet::grants`]).
    pub constraints: Vec<(String, String)>,
}

impl ResourceScope {
    /// Parses one `level/Type.actions[?constraints]` token; `None` if it is not one.
    ///
    /// The type is `*` or looks like a FHIR type name (`^[A-Z][A-Za-z]+$`); whether it is an R4
    /// type is the caller's business. Constraints are accepted after v1 actions too: they grant
    /// nothing anyway, and keeping the scope lets [`ScopeSet::has_resource_scope`] see it.
    pub fn parse(token: &str) -> Option<ResourceScope> {
        let (level, rest) = token.split_once('/')?;
        let level = Level::parse(level)?;
        let (scope, query) = match rest.split_once('?') {
            Some((scope, query)) => (scope, Some(query)),
            None => (rest, None),
        };
        let (resource_type, actions) = scope.split_once('.')?;
        Some(ResourceScope {
            level,
            resource_type: parse_resource_type(resource_type)?,
            actions: Actions::parse(actions)?,
            constraints: query.map_or(Some(Vec::new()), parse_constraints)?,
        })
    }

    /// Whether the scope narrows its grant with constraints this server does not enforce.
    pub fn is_constrained(&self) -> bool {
        !self.constraints.is_empty()
    }

    /// Whether the scope names `resource_type` or is a `*` scope.
    pub fn covers(&self, resource_type: &str) -> bool {
        self.resource_type
            .as_deref()
            .is_none_or(|own| own == resource_type)
    }

    /// What the scope grants in practice: its actions if unconstrained, else nothing.
    fn effective_actions(&self) -> Actions {
        if self.is_constrained() {
            Actions::EMPTY
        } else {
            self.actions
        }
    }
}

/// `Some(None)` for `*`, `Some(Some(type))` for a type-shaped name, `None` if malformed.
fn parse_resource_type(text: &str) -> Option<Option<String>> {
    if text == "*" {
        return Some(None);
    }
    let mut chars = text.chars();
    let first_upper = chars.next().is_some_and(|c| c.is_ascii_uppercase());
    let rest_ok = text.len() >= 2 && chars.all(|c| c.is_ascii_alphabetic());
    (first_upper && rest_ok).then(|| Some(text.to_owned()))
}

/// Splits `name=value&name=value` and percent-decodes both sides. An empty query, an empty
/// pair, a pair without `=` or with an empty name, or a bad `%XX` makes the scope malformed:
/// a constraint we cannot read is not one we could ever claim to honour.
fn parse_constraints(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let name = percent_decode(name)?;
            (!name.is_empty()).then_some(())?;
            Some((name, percent_decode(value)?))
        })
        .collect()
}

/// RFC 3986 percent-decoding (`+` stays `+`); `None` on a truncated or non-hex escape or if
/// the bytes are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}

/// The scopes of one access token, sorted into what the server acts on and what it only logs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeSet {
    pub resources: Vec<ResourceScope>,
    /// `launch/patient`: the app asked for a patient in its launch context.
    pub launch_patient: bool,
    /// `launch`: an EHR launch.
    pub launch: bool,
    pub openid: bool,
    /// `fhirUser`.
    pub fhir_user: bool,
    pub offline_access: bool,
    pub online_access: bool,
    /// Tokens that are not SMART scopes this server knows (kept for logs/audit), including
    /// malformed resource scopes.
    pub other: Vec<String>,
}

impl ScopeSet {
    /// Parses an OAuth2 `scope` string (space separated; repeated or other whitespace is
    /// tolerated). Never fails: malformed resource scopes go to `other` and grant nothing.
    pub fn parse(scope: &str) -> ScopeSet {
        ScopeSet::from_list([scope])
    }

    /// Builds the set from a list, as in a `scp` claim array. An item holding several
    /// space-separated scopes is split, so a mis-shaped claim cannot hide a scope in one item.
    pub fn from_list<'a>(items: impl IntoIterator<Item = &'a str>) -> ScopeSet {
        let mut set = ScopeSet::default();
        for token in items.into_iter().flat_map(str::split_whitespace) {
            set.add(token);
        }
        set
    }

    fn add(&mut self, token: &str) {
        let flag = match token {
            "launch/patient" => &mut self.launch_patient,
            "launch" => &mut self.launch,
            "openid" => &mut self.openid,
            "fhirUser" => &mut self.fhir_user,
            "offline_access" => &mut self.offline_access,
            "online_access" => &mut self.online_access,
            _ => {
                match ResourceScope::parse(token) {
                    Some(scope) => self.resources.push(scope),
                    None => self.other.push(token.to_owned()),
                }
                return;
            }
        };
        *flag = true;
    }

    /// The broadest level (System > User > Patient) at which an unconstrained resource scope
    /// grants `action` on `resource_type` (a `*` scope covers every type), or `None`.
    pub fn grants(&self, resource_type: &str, action: Action) -> Option<Level> {
        self.levels(resource_type, action).pop()
    }

    /// Every level at which an unconstrained scope grants `action` on `resource_type`,
    /// ascending and without repeats, for callers that must know e.g. whether only
    /// patient-level access exists.
    pub fn levels(&self, resource_type: &str, action: Action) -> Vec<Level> {
        let mut levels: Vec<Level> = self
            .resources
            .iter()
            .filter(|s| s.covers(resource_type) && s.effective_actions().contains(action))
            .map(|s| s.level)
            .collect();
        levels.sort_unstable();
        levels.dedup();
        levels
    }

    /// Whether any resource scope (constrained or not) is present: HealthLake refuses a token
    /// without at least one FHIR resource scope.
    pub fn has_resource_scope(&self) -> bool {
        !self.resources.is_empty()
    }

    /// Whether an unconstrained scope at exactly `level` grants `action` on at least one type,
    /// for system-wide operations such as `$export` (`system/*.read`). Levels do not imply
    /// each other: a `user/` scope is not a `system/` or a `patient/` one.
    pub fn grants_any(&self, level: Level, action: Action) -> bool {
        self.resources
            .iter()
            .any(|s| s.level == level && s.effective_actions().contains(action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(token: &str) -> ResourceScope {
        let set = ScopeSet::parse(token);
        assert_eq!(set.other, Vec::<String>::new(), "{token} should parse");
        assert_eq!(set.resources.len(), 1, "{token}");
        set.resources
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{token}"))
    }

    fn malformed(token: &str) {
        let set = ScopeSet::parse(token);
        assert!(set.resources.is_empty(), "{token} should be malformed");
        assert_eq!(set.other, vec![token.to_owned()], "{token}");
    }

    fn actions(letters: &str) -> Actions {
        letters
            .chars()
            .filter_map(Action::from_letter)
            .fold(Actions::EMPTY, |set, a| set.union(Actions::only(a)))
    }

    #[test]
    fn v1_patient_wildcard_read() {
        let s = one("patient/*.read");
        assert_eq!(s.level, Level::Patient);
        assert_eq!(s.resource_type, None);
        assert_eq!(s.actions, actions("rs"));
        assert!(s.constraints.is_empty());
    }

    #[test]
    fn v1_write_is_create_update_delete() {
        let s = one("user/Observation.write");
        assert_eq!(s.level, Level::User);
        assert_eq!(s.resource_type.as_deref(), Some("Observation"));
        assert_eq!(s.actions, actions("cud"));
        assert_eq!(s.actions, Actions::WRITE);
    }

    #[test]
    fn v1_star_is_everything() {
        let s = one("system/*.*");
        assert_eq!(s.level, Level::System);
        assert_eq!(s.actions, Actions::ALL);
        assert!(Action::ALL.iter().all(|a| s.actions.contains(*a)));
    }

    #[test]
    fn v2_letters() {
        assert_eq!(one("patient/Observation.rs").actions, Actions::READ);
        assert_eq!(one("user/Patient.cruds").actions, Actions::ALL);
        assert_eq!(one("user/Patient.cud").actions, Actions::WRITE);
        assert_eq!(one("user/Patient.d").actions, Actions::only(Action::Delete));
        assert_eq!(one("user/Patient.cs").actions, actions("cs"));
    }

    #[test]
    fn v2_constraints_are_decoded() {
        let s = one(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        );
        assert_eq!(s.actions, Actions::READ);
        assert_eq!(
            s.constraints,
            vec![(
                "category".to_owned(),
                "http://terminology.hl7.org/CodeSystem/observation-category|laboratory".to_owned()
            )]
        );
        let s = one("patient/Observation.rs?category=a%7Cb&code%3Atext=x%20y+z&empty=");
        assert_eq!(
            s.constraints,
            vec![
                ("category".to_owned(), "a|b".to_owned()),
                ("code:text".to_owned(), "x y+z".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
        let s = one("user/Condition.rs?code=%C3%A9");
        assert_eq!(s.constraints[0].1, "é");
    }

    #[test]
    fn bad_constraints_are_malformed() {
        for token in [
            "patient/Observation.rs?",
            "patient/Observation.rs?category",
            "patient/Observation.rs?=lab",
            "patient/Observation.rs?a=1&&b=2",
            "patient/Observation.rs?a=%4",
            "patient/Observation.rs?a=%zz",
            "patient/Observation.rs?a=%FF",
        ] {
            malformed(token);
        }
    }

    #[test]
    fn bad_actions_are_malformed() {
        for token in [
            "patient/Observation.rw",
            "patient/Observation.delete",
            "patient/Observation.",
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.READ",
            "patient/Observation",
            "patient/Observation.read.write",
        ] {
            malformed(token);
        }
    }

    #[test]
    fn bad_levels_and_types_are_malformed() {
        for token in [
            "Patient/Observation.read",
            "SYSTEM/*.read",
            "admin/*.read",
            "/Observation.read",
            "patient/observation.read",
            "patient/O.read",
            "patient/Obs1.read",
            "patient/Obs-x.read",
            "patient/.read",
            "patient/**.read",
            "patient/Observation/x.read",
        ] {
            malformed(token);
        }
    }

    #[test]
    fn launch_and_identity_scopes() {
        let set = ScopeSet::parse(
            "launch/patient launch openid fhirUser profile offline_access online_access",
        );
        assert!(set.launch_patient && set.launch && set.openid && set.fhir_user);
        assert!(set.offline_access && set.online_access);
        assert_eq!(set.other, vec!["profile".to_owned()]);
        assert!(!set.has_resource_scope());
    }

    #[test]
    fn launch_alone_is_not_launch_patient() {
        let set = ScopeSet::parse("launch");
        assert!(set.launch && !set.launch_patient);
        let set = ScopeSet::parse("launch/patient");
        assert!(!set.launch && set.launch_patient);
        assert_eq!(
            ScopeSet::parse("launch/encounter").other,
            ["launch/encounter"]
        );
    }

    #[test]
    fn empty_and_whitespace_give_empty_set() {
        assert_eq!(ScopeSet::parse(""), ScopeSet::default());
        assert_eq!(ScopeSet::parse("  \t \n "), ScopeSet::default());
        assert_eq!(ScopeSet::from_list([]), ScopeSet::default());
    }

    #[test]
    fn extra_whitespace_and_duplicates() {
        let set = ScopeSet::parse("  patient/*.read \t patient/*.read\n\nopenid  openid ");
        assert_eq!(set.resources.len(), 2);
        assert!(set.openid);
        assert!(set.other.is_empty());
        assert_eq!(set.grants("Patient", Action::Read), Some(Level::Patient));
    }

    #[test]
    fn from_list_matches_parse() {
        let list = ScopeSet::from_list(["system/*.read", "openid", "weird"]);
        assert_eq!(list, ScopeSet::parse("system/*.read openid weird"));
        let split = ScopeSet::from_list(["system/*.read openid", ""]);
        assert_eq!(split, ScopeSet::parse("system/*.read openid"));
    }

    #[test]
    fn grants_picks_broadest_level() {
        let set = ScopeSet::parse("patient/Observation.read user/*.read system/Patient.rs");
        assert_eq!(set.grants("Observation", Action::Read), Some(Level::User));
        assert_eq!(set.grants("Patient", Action::Search), Some(Level::System));
        assert_eq!(set.grants("Encounter", Action::Read), Some(Level::User));
        assert_eq!(set.grants("Observation", Action::Create), None);
    }

    #[test]
    fn grants_respects_type_and_action() {
        let set = ScopeSet::parse("patient/Observation.write user/Patient.r");
        assert_eq!(
            set.grants("Observation", Action::Update),
            Some(Level::Patient)
        );
        assert_eq!(set.grants("Observation", Action::Read), None);
        assert_eq!(set.grants("Patient", Action::Read), Some(Level::User));
        assert_eq!(set.grants("Patient", Action::Search), None);
        assert_eq!(set.grants("Condition", Action::Update), None);
        // Type names are matched exactly, not case-insensitively.
        assert_eq!(set.grants("observation", Action::Update), None);
    }

    #[test]
    fn constrained_scopes_grant_nothing() {
        let set = ScopeSet::parse("patient/Observation.rs?category=laboratory system/*.cruds?a=b");
        assert!(set.has_resource_scope());
        assert!(set.resources.iter().all(ResourceScope::is_constrained));
        assert_eq!(set.grants("Observation", Action::Read), None);
        assert!(set.levels("Observation", Action::Read).is_empty());
        assert!(!set.grants_any(Level::System, Action::Read));
    }

    #[test]
    fn constrained_scope_does_not_hide_unconstrained_one() {
        let set =
            ScopeSet::parse("system/Observation.rs?category=laboratory patient/Observation.rs");
        assert_eq!(
            set.grants("Observation", Action::Read),
            Some(Level::Patient)
        );
        assert_eq!(set.levels("Observation", Action::Read), [Level::Patient]);
    }

    #[test]
    fn levels_are_sorted_and_distinct() {
        let set = ScopeSet::parse(
            "system/*.read patient/Observation.rs patient/*.read user/Observation.cruds",
        );
        assert_eq!(
            set.levels("Observation", Action::Read),
            [Level::Patient, Level::User, Level::System]
        );
        assert_eq!(set.levels("Observation", Action::Create), [Level::User]);
        assert_eq!(
            set.levels("Patient", Action::Read),
            [Level::Patient, Level::System]
        );
    }

    #[test]
    fn grants_any_needs_exact_level() {
        let set = ScopeSet::parse("system/*.read user/Patient.write");
        assert!(set.grants_any(Level::System, Action::Read));
        assert!(set.grants_any(Level::System, Action::Search));
        assert!(!set.grants_any(Level::System, Action::Create));
        assert!(set.grants_any(Level::User, Action::Delete));
        assert!(!set.grants_any(Level::User, Action::Read));
        assert!(!set.grants_any(Level::Patient, Action::Read));
        let typed = ScopeSet::parse("system/Patient.read");
        assert!(typed.grants_any(Level::System, Action::Read));
    }

    #[test]
    fn malformed_scopes_grant_nothing() {
        let set = ScopeSet::parse("Patient/*.read patient/*.rw system/*.sr openid");
        assert!(!set.has_resource_scope());
        assert_eq!(set.other.len(), 3);
        assert_eq!(set.grants("Patient", Action::Read), None);
        assert!(!set.grants_any(Level::System, Action::Search));
        assert!(!set.grants_any(Level::Patient, Action::Read));
    }

    #[test]
    fn level_order_and_names() {
        assert!(Level::Patient < Level::User && Level::User < Level::System);
        assert_eq!(Level::System.as_str(), "system");
        assert_eq!(Level::parse(Level::Patient.as_str()), Some(Level::Patient));
    }

    #[test]
    fn actions_set_operations() {
        assert!(Actions::EMPTY.is_empty());
        assert_eq!(Actions::READ.union(Actions::WRITE), Actions::ALL);
        assert!(!Actions::READ.contains(Action::Create));
        assert_eq!(
            Actions::READ.iter().collect::<Vec<_>>(),
            [Action::Read, Action::Search]
        );
        assert_eq!(format!("{:?}", Actions::ALL), "Actions(cruds)");
        assert_eq!(Actions::parse(""), None);
        assert_eq!(Actions::parse("x"), None);
    }
}
