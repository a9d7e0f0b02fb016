//! A parsed Prometheus text exposition, as served by the admin `/metrics`.

use std::collections::BTreeMap;

/// One sample: metric name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `sluice_requests_total` or `sluice_request_duration_seconds_count`.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// The samples of one scrape.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The raw text, for failure messages.
    pub text: String,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text format (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// The value of the sample named `name` whose labels include `labels`; summed when
    /// several match, `None` when none does.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like [`Metrics::get`], for a series that must exist: panics, naming the series and
    /// listing what the scrape has under that name (or, when nothing has it, the metric
    /// names that look like it), so that a misspelt name or label fails the test instead
    /// of reading as 0. In a poll, where a series may not exist *yet*, use
    /// [`Metrics::get`].
    #[track_caller]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.get(name, labels) {
            Some(v) => v,
            None => panic!("{}", self.missing(name, labels)),
        }
    }

    /// What the scrape has instead of the series `name{labels}`.
    fn missing(&self, name: &str, labels: &[(&str, &str)]) -> String {
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let series = format!("{name}{{{}}}", wanted.join(","));
        let same_name: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| {
                let l: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                format!("  {name}{{{}}} {}", l.join(","), s.value)
            })
            .collect();
        if !same_name.is_empty() {
            return format!(
                "no series {series} in the scrape; the series named {name} are:\n{}",
                same_name.join("\n")
            );
        }
        // Names sharing the first two words (`sluice_request` for `sluice_request_total`).
        let prefix: String = name.split('_').take(2).collect::<Vec<_>>().join("_");
        let mut like: Vec<&str> = self
            .samples
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        like.dedup();
        let mut names: Vec<&str> = self.samples.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if like.is_empty() {
            format!(
                "no metric named {name} in the scrape (looking for {series}); the scrape has: {}",
                names.join(", ")
            )
        } else {
            like.sort_unstable();
            like.dedup();
            format!(
                "no metric named {name} in the scrape (looking for {series}); similar names: {}",
                like.join(", ")
            )
        }
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), BTreeMap::new()),
        Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample { name, labels, value })
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches(',').trim_start();
        if s.is_empty() {
            return Some(labels);
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        s = &rest[end + 1..];
    }
}

#[test]
fn parses_labels_and_values() {
    let m = Metrics::parse(
        "# HELP x y\nsluice_requests_total{route=\"a\",status_class=\"2xx\"} 7\nsluice_config_version 3\nh_bucket{le=\"+Inf\",route=\"a\"} 2\n",
    );
    assert_eq!(
        m.get(
            "sluice_requests_total",
            &[("route", "a"), ("status_class", "2xx")]
        ),
        Some(7.0)
    );
    assert_eq!(m.get("sluice_config_version", &[]), Some(3.0));
    assert_eq!(m.get("h_bucket", &[("le", "+Inf")]), Some(2.0));
    assert_eq!(m.get("sluice_requests_total", &[("route", "b")]), None);
}

#[test]
fn a_missing_series_panics_naming_it_and_what_exists() {
    let m = Metrics::parse(
        "sluice_requests_total{route=\"a\",status_class=\"2xx\"} 7\nsluice_request_duration_seconds_count{route=\"a\"} 7\n",
    );
    assert_eq!(m.value("sluice_requests_total", &[("route", "a")]), 7.0);
    let wrong_label = std::panic::catch_unwind(|| m.value("sluice_requests_total", &[("route", "b")]))
        .unwrap_err()
        .downcast::<String>()
        .unwrap();
    assert!(
        wrong_label.contains("sluice_requests_total{route=\"b\"}"),
        "{wrong_label}"
    );
    assert!(
        wrong_label.contains("route=\"a\",status_class=\"2xx\"} 7"),
        "{wrong_label}"
    );
    let wrong_name = std::panic::catch_unwind(|| m.value("sluice_request_total", &[]))
        .unwrap_err()
        .downcast::<String>()
        .unwrap();
    assert!(
        wrong_name.contains("no metric named sluice_request_total"),
        "{wrong_name}"
    );
    assert!(wrong_name.contains("sluice_requests_total"), "{wrong_name}");
}
