//! Reading the test guest's output lines (docs/guest-abi.md).

use std::collections::HashMap;

/// The `key=value` words of every line starting with `prefix`.
pub fn records(out: &str, prefix: &str) -> Vec<HashMap<String, String>> {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A numeric field of a record, if present and numeric.
pub fn num(r: &HashMap<String, String>, key: &str) -> Option<f64> {
    r.get(key)?.parse().ok()
}
