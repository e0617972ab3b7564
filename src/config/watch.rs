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
            Some(loaded.files.into_iter().chain(loaded.tls_files).collect())
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
/// file by renaming are seen too.
pub async fn watch(
    proxy: Arc<Proxy>,
    path: PathBuf,
    mut watched: Vec<PathBuf>,
) -> notify::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
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
    while rx.recv().await.is_some() {
        // Editors write in bursts: settle, then reload once.
        tokio::time::sleep(Duration::from_millis(150)).await;
        while rx.try_recv().is_ok() {}
        if let Some(files) = reload(&proxy, &path) {
            watched = files;
            rewatch(&mut watcher, &watched, &mut dirs);
        }
    }
    Ok(())
}
