//! Re-applies route files when they (or the certificates they name) change. A bad
//! change is refused and logged with file, line and field; the old table keeps
//! serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::proxy::Proxy;

/// Loads `path` and applies it, counting the result; returns the files to watch.
pub fn reload(proxy: &Proxy, path: &Path) -> Option<Vec<PathBuf>> {
    let reloads = &proxy.metrics.config_reloads_total;
    match super::load(path) {
        Ok(loaded) => {
            let n = loaded.table.routes().len();
            proxy.apply(loaded.table);
            reloads.with_label_values(&["success"]).inc();
            tracing::info!(routes = n, config = %path.display(), "route table applied");
            let watched = loaded.files.into_iter().chain(loaded.tls_files);
            Some(watched.chain(loaded.jwks_files).collect())
        }
        Err(errors) => {
            reloads.with_label_values(&["error"]).inc();
            for e in &errors {
                tracing::error!(error = %e, "configuration refused; the previous route table keeps serving");
            }
            None
        }
    }
}

/// Watches `path` (and its certificate files) and re-applies on change until the
/// process ends. Directories are watched, not files, so editors that replace a
/// file by renaming are seen too. `loaded` is the [`fingerprint`] of what the
/// table being served was read from: a change made before the watch began (right
/// after start) is applied as soon as it does.
pub async fn watch(
    proxy: Arc<Proxy>,
    path: PathBuf,
    mut watched: Vec<PathBuf>,
    loaded: u64,
) -> notify::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tx_now = tx.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !matches!(ev.kind, notify::EventKind::Access(_))
                && ev.paths.iter().any(|p| relevant(p))
            {
                let _ = tx.send(());
            }
        }
    })?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let rewatch =
        |watcher: &mut notify::RecommendedWatcher, files: &[PathBuf], dirs: &mut Vec<PathBuf>| {
            let mut want: Vec<PathBuf> = std::iter::once(path.clone())
                .chain(files.iter().cloned())
                .map(|p| {
                    if p.is_dir() {
                        p
                    } else {
                        p.parent().map(Path::to_path_buf).unwrap_or_default()
                    }
                })
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p
                    }
                })
                .collect();
            want.sort();
            want.dedup();
            for d in dirs.iter().filter(|d| !want.contains(d)) {
                let _ = watcher.unwatch(d);
            }
            for d in want.iter().filter(|d| !dirs.contains(d)) {
                if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch");
                }
            }
            *dirs = want;
        };
    rewatch(&mut watcher, &watched, &mut dirs);
    let mut last = loaded;
    // Looks once now, for what changed between the first load and the watch.
    let _ = tx_now.send(());
    while rx.recv().await.is_some() {
        // Editors write in bursts: settle, then reload once.
        tokio::time::sleep(Duration::from_millis(150)).await;
        while rx.try_recv().is_ok() {}
        // Skip a reload when nothing we read changed (an editor's swap file, a
        // touch): the table, the metrics and the log stay quiet.
        let now = fingerprint(&path, &watched);
        if now == last {
            continue;
        }
        last = now;
        if let Some(files) = reload(&proxy, &path) {
            watched = files;
            rewatch(&mut watcher, &watched, &mut dirs);
            last = fingerprint(&path, &watched);
        }
    }
    Ok(())
}

/// Whether a changed path can matter: route files, certificate files, and the
/// `..data` symlink swap a Kubernetes ConfigMap or Secret volume makes on update.
fn relevant(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("..")
        || [".yaml", ".yml", ".pem", ".crt", ".key", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
        || !name.contains('.')
}

/// A digest of everything a reload reads: route files and certificate files.
pub fn fingerprint(path: &Path, watched: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let files = super::route_files(path).unwrap_or_default();
    for f in files.iter().chain(watched) {
        f.hash(&mut h);
        std::fs::read(f).ok().hash(&mut h);
    }
    h.finish()
}
