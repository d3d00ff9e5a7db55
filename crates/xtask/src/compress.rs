//! Precompression of the dashboard's build (`cargo xtask build-spa`).
//!
//! Every compressible file in `frontend/dist` (wasm, JavaScript, CSS, HTML, SVG, JSON, text,
//! source maps) gets a brotli sibling (`.br`, quality 11, 16 MiB window) and a gzip sibling
//! (`.gz`, level 9) when they are smaller than the file. The server picks one by the request's
//! `Accept-Encoding` (crates/server/src/spa.rs); compressing once at build time lets it use the
//! slowest, smallest settings, which no per-request compression could afford.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Must match `COMPRESSIBLE` in crates/server/src/spa.rs.
const COMPRESSIBLE: [&str; 9] = [
    "wasm", "js", "mjs", "css", "html", "svg", "json", "txt", "map",
];

/// One file's sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    pub path: PathBuf,
    pub plain: u64,
    pub brotli: Option<u64>,
    pub gzip: Option<u64>,
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn compressible(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| COMPRESSIBLE.contains(&e.to_ascii_lowercase().as_str()))
}

pub fn brotli(data: &[u8]) -> Result<Vec<u8>> {
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 24,
        size_hint: data.len(),
        ..Default::default()
    };
    let mut out = Vec::new();
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).context("brotli failed")?;
    Ok(out)
}

pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes `path.{suffix}` when `packed` is smaller than the file; removes a stale one otherwise.
fn write_if_smaller(path: &Path, suffix: &str, plain: usize, packed: &[u8]) -> Result<Option<u64>> {
    let target = sibling(path, suffix);
    if packed.len() < plain {
        fs::write(&target, packed).with_context(|| format!("cannot write {}", target.display()))?;
        Ok(Some(packed.len() as u64))
    } else {
        if target.exists() {
            fs::remove_file(&target)?;
        }
        Ok(None)
    }
}

/// Compresses every compressible file under `dir`; returns their sizes, largest first.
pub fn precompress(dir: &Path) -> Result<Vec<Sizes>> {
    let mut all = Vec::new();
    files(dir, &mut all)?;
    let mut out = Vec::new();
    for path in all.into_iter().filter(|p| compressible(p)) {
        let data = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let brotli = write_if_smaller(&path, "br", data.len(), &brotli(&data)?)?;
        let gzip = write_if_smaller(&path, "gz", data.len(), &gzip(&data)?)?;
        out.push(Sizes {
            path: path.strip_prefix(dir).unwrap_or(&path).to_path_buf(),
            plain: data.len() as u64,
            brotli,
            gzip,
        });
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.plain));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::Read;

    use super::*;

    #[test]
    fn siblings_decompress_to_the_file_and_only_compressible_files_get_them() {
        let dir = std::env::temp_dir().join(format!("xtask-compress-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("snippets")).unwrap();
        let js = "export function f() { return 'hello'; }\n".repeat(200);
        fs::write(dir.join("app-0123456789abcdef.js"), &js).unwrap();
        fs::write(
            dir.join("snippets/x.css"),
            "body { color: red; }\n".repeat(50),
        )
        .unwrap();
        fs::write(dir.join("tiny.json"), "{}").unwrap();
        fs::write(dir.join("logo.png"), [0u8; 4096]).unwrap();

        let sizes = precompress(&dir).unwrap();
        assert_eq!(sizes.len(), 3, "{sizes:?}");
        assert_eq!(sizes[0].path, PathBuf::from("app-0123456789abcdef.js"));

        let br = fs::read(dir.join("app-0123456789abcdef.js.br")).unwrap();
        let mut unpacked = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, js.as_bytes());
        let gz = fs::read(dir.join("app-0123456789abcdef.js.gz")).unwrap();
        let mut unpacked = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, js);
        assert!(sizes[0].brotli.unwrap() < sizes[0].gzip.unwrap());

        assert!(dir.join("snippets/x.css.br").is_file(), "subfolders too");
        assert!(
            !dir.join("tiny.json.br").exists(),
            "no sibling larger than the file"
        );
        assert!(
            !dir.join("logo.png.br").exists(),
            "images are not compressed"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
