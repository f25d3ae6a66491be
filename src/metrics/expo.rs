//! The Prometheus text exposition format (version 0.0.4), as node_exporter's
//! textfile collector and a scrape read it: per metric family a `# HELP`
//! and a `# TYPE` line, then its samples, all together; label values
//! escaped (`\\`, `\"`, `\n`), HELP text escaped (`\\`, `\n`).
//!
//! Families are declared once as [`Def`]s (name, type, help), so the
//! probes that add samples to the same family (`chatmail_docker_probe_up`)
//! cannot disagree about them, and the output lists families in the order
//! of the list it is given, whichever probe finished first.

use std::fmt::Write as _;

/// A metric family's type. Only what the tool reports: gauges (values
/// that go up and down, timestamps, 0/1 states) and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Gauge,
    Counter,
}

/// One metric family.
#[derive(Debug, PartialEq, Eq)]
pub struct Def {
    pub name: &'static str,
    pub kind: Type,
    pub help: &'static str,
}

/// One sample: a family, its labels and its value. Labels with an empty
/// value are left out (Prometheus treats them as absent anyway).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub def: &'static Def,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// Samples gathered by the probes, in the order they were added.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    pub fn add(&mut self, def: &'static Def, labels: &[(&'static str, &str)], value: f64) {
        self.0.push(Sample {
            def,
            labels: labels
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (*k, v.to_string()))
                .collect(),
            value,
        });
    }

    /// A 0/1 value.
    pub fn flag(&mut self, def: &'static Def, labels: &[(&'static str, &str)], on: bool) {
        self.add(def, labels, if on { 1.0 } else { 0.0 });
    }

    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Sample> {
        self.0.iter()
    }
}

/// The text of `samples`, families in the order of `defs` (a family
/// without samples is left out; a sample of a family not in `defs` comes
/// last, so nothing is ever dropped).
pub fn render(defs: &[&'static Def], samples: &Samples) -> String {
    let mut order: Vec<&'static Def> = defs.to_vec();
    for s in samples.iter() {
        if !order.iter().any(|d| d.name == s.def.name) {
            order.push(s.def);
        }
    }
    let mut out = String::new();
    for def in order {
        let mut of = samples.iter().filter(|s| s.def.name == def.name).peekable();
        if of.peek().is_none() {
            continue;
        }
        let kind = match def.kind {
            Type::Gauge => "gauge",
            Type::Counter => "counter",
        };
        let _ = writeln!(out, "# HELP {} {}", def.name, escape_help(def.help));
        let _ = writeln!(out, "# TYPE {} {kind}", def.name);
        for s in of {
            out.push_str(def.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", value(s.value));
        }
    }
    out
}

/// A sample value: integers without a fraction or exponent, other numbers
/// as the shortest text that reads back the same, `NaN`, `+Inf`, `-Inf`.
pub fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A label value: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and line feed escaped.
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Whether `name` is a valid metric or label name.
pub fn valid_name(name: &str, label: bool) -> bool {
    let mut chars = name.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (!label && c == ':');
    let ok_rest = |c: char| c.is_ascii_alphanumeric() || c == '_' || (!label && c == ':');
    chars.next().is_some_and(ok_first) && chars.all(ok_rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    static UP: Def = Def {
        name: "x_up",
        kind: Type::Gauge,
        help: "Up.",
    };
    static SEEN: Def = Def {
        name: "x_seen_total",
        kind: Type::Counter,
        help: "Seen \\ with\na line break.",
    };

    #[test]
    fn families_come_together_in_the_given_order_with_help_and_type() {
        let mut s = Samples::default();
        s.add(&UP, &[("probe", "a")], 1.0);
        s.add(&SEEN, &[], 3.0);
        s.add(&UP, &[("probe", "b"), ("reason", "")], 0.0);
        assert_eq!(
            render(&[&UP, &SEEN], &s),
            "# HELP x_up Up.\n# TYPE x_up gauge\nx_up{probe=\"a\"} 1\nx_up{probe=\"b\"} 0\n\
             # HELP x_seen_total Seen \\\\ with\\na line break.\n# TYPE x_seen_total counter\nx_seen_total 3\n"
        );
        // Not listed: still printed, last. Listed without samples: left out.
        assert!(render(&[], &s).starts_with("# HELP x_up"));
        assert_eq!(render(&[&UP], &Samples::default()), "");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = Samples::default();
        s.add(&UP, &[("dir", "/b\\a\"ck\nups")], 1.0);
        assert!(render(&[&UP], &s).contains("x_up{dir=\"/b\\\\a\\\"ck\\nups\"} 1\n"));
    }

    #[test]
    fn values() {
        assert_eq!(value(0.0), "0");
        assert_eq!(value(-3.0), "-3");
        assert_eq!(value(1_796_534_298.0), "1796534298");
        assert_eq!(value(0.25), "0.25");
        assert_eq!(value(1.5e20), "150000000000000000000");
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(1e300).parse::<f64>().unwrap(), 1e300);
    }

    #[test]
    fn names() {
        assert!(valid_name("chatmail_docker_up", false));
        assert!(valid_name("a:b", false) && !valid_name("a:b", true));
        assert!(!valid_name("1a", false) && !valid_name("", true) && !valid_name("a-b", true));
    }
}
