//! `DiffOptions` as a URL query string, for `GET /v1/diff/{a}/{b}`: the CLI encodes its
//! options and the daemon decodes them, so both paths compare with the same settings.

use super::{DiffOptions, Tolerance};
use crate::daemon::paths::{percent_decode, percent_encode};

/// Encodes the options a request carries. `read_files` is never sent: a daemon does not read
/// paths named in a diff request.
pub fn to_query(options: &DiffOptions) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    pairs.extend(options.include.iter().map(|p| ("include", p.clone())));
    pairs.extend(options.exclude.iter().map(|p| ("exclude", p.clone())));
    if !options.statuses.is_empty() {
        let statuses: Vec<&str> = options.statuses.iter().map(|s| s.as_str()).collect();
        pairs.push(("status", statuses.join(",")));
    }
    pairs.push(("sort", options.sort.as_str().to_string()));
    pairs.push(("top", options.top.to_string()));
    // `{:?}` prints the shortest text that parses back to the same f64.
    pairs.push(("atol", format!("{:?}", options.tolerance.atol)));
    pairs.push(("rtol", format!("{:?}", options.tolerance.rtol)));
    if let Some(map) = &options.map_prefix {
        pairs.push(("map_prefix", map.clone()));
    }
    if options.no_align {
        pairs.push(("no_align", "true".into()));
    }
    pairs.iter().map(|(key, value)| format!("{key}={}", percent_encode(value))).collect::<Vec<_>>().join("&")
}

/// Decodes a request's query string; a missing key keeps its default. Errors name the key and
/// the value.
pub fn from_query(query: &str) -> Result<DiffOptions, String> {
    let mut options = DiffOptions::default();
    let mut tolerance = Tolerance { atol: 0.0, rtol: 0.0 };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(raw)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| format!("query value of {key:?} is not percent-encoded UTF-8"))?;
        let number = |what: &str| -> Result<f64, String> {
            value.parse::<f64>().map_err(|_| format!("query parameter {what}={value:?} is not a number"))
        };
        match key {
            "include" => options.include.push(value),
            "exclude" => options.exclude.push(value),
            "status" => {
                for status in value.split(',').filter(|s| !s.is_empty()) {
                    options.statuses.push(status.parse()?);
                }
            }
            "sort" => options.sort = value.parse()?,
            "top" => options.top = value.parse().map_err(|_| format!("query parameter top={value:?} is not a count"))?,
            "atol" => tolerance.atol = number("atol")?,
            "rtol" => tolerance.rtol = number("rtol")?,
            "map_prefix" => options.map_prefix = Some(value),
            "no_align" => {
                options.no_align = match value.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    other => return Err(format!("query parameter no_align={other:?} must be true or false")),
                }
            }
            other => return Err(format!("unknown query parameter {other:?}; see docs/openapi.yaml")),
        }
    }
    options.tolerance = tolerance;
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{DiffSort, TensorStatus};

    #[test]
    fn options_survive_the_round_trip() {
        let options = DiffOptions {
            include: vec!["layers.*".into(), "a&b=c".into()],
            exclude: vec!["*.bias".into()],
            statuses: vec![TensorStatus::Changed, TensorStatus::ShapeChanged],
            sort: DiffSort::Relative,
            top: 3,
            tolerance: Tolerance { atol: 1e-7, rtol: 0.1 },
            map_prefix: Some("=bert.".into()),
            no_align: true,
            read_files: true,
        };
        let decoded = from_query(&to_query(&options)).unwrap();
        assert_eq!(decoded.include, options.include);
        assert_eq!(decoded.exclude, options.exclude);
        assert_eq!(decoded.statuses, options.statuses);
        assert_eq!(decoded.sort, DiffSort::Relative);
        assert_eq!(decoded.top, 3);
        assert_eq!(decoded.tolerance, options.tolerance);
        assert_eq!(decoded.map_prefix.as_deref(), Some("=bert."));
        assert!(decoded.no_align);
        assert!(!decoded.read_files, "a request never turns on file reads");
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        assert!(from_query("top=x").unwrap_err().contains("top"));
        assert!(from_query("atol=abc").unwrap_err().contains("atol"));
        assert!(from_query("status=moved").is_err());
        assert!(from_query("colour=red").unwrap_err().contains("colour"));
        assert!(from_query("include=%zz").unwrap_err().contains("include"));
        assert_eq!(from_query("").unwrap().top, crate::diff::DEFAULT_TOP);
    }
}
