//! Extent list files: lines "OFFSET LENGTH" (decimal, '#' comments), or a JSON list of
//! objects with `offset` (or vSphere's `start`) and `length`.
use std::path::Path;

use anyhow::{bail, Context};
use osm_api::Extent;

pub fn read(path: &Path) -> anyhow::Result<Vec<Extent>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading extents file {}", path.display()))?;
    parse(&text).with_context(|| format!("extents file {}", path.display()))
}

#[derive(serde::Deserialize)]
struct JsonExtent {
    #[serde(alias = "start")]
    offset: u64,
    length: u64,
}

pub fn parse(text: &str) -> anyhow::Result<Vec<Extent>> {
    if text.trim_start().starts_with('[') {
        let v: Vec<JsonExtent> = serde_json::from_str(text).context("not a JSON list of {offset, length}")?;
        return Ok(v
            .into_iter()
            .map(|e| Extent {
                offset: e.offset,
                length: e.length,
            })
            .collect());
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(o), Some(l), 2) = (f.first(), f.get(1), f.len()) else {
            bail!("line {}: expected \"OFFSET LENGTH\", got {line:?}", n + 1);
        };
        let num = |s: &str| {
            s.parse::<u64>()
                .with_context(|| format!("line {}: {s:?} is not a decimal number", n + 1))
        };
        out.push(Extent {
            offset: num(o)?,
            length: num(l)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats() {
        let a = parse("# cbt\n0 4096\n1048576 65536 # tail\n").unwrap();
        let b = parse(r#"[{"start":0,"length":4096},{"offset":1048576,"length":65536}]"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a[1],
            Extent {
                offset: 1048576,
                length: 65536
            }
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let e = format!("{:#}", parse("0 4096\n12 x\n").unwrap_err());
        assert!(e.contains("line 2"), "{e}");
    }
}
