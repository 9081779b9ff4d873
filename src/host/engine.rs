//! A scripting session: one Rhai engine, one scope, one runtime.
//!
//! `baton run` evaluates a file in a session; the REPL evaluates lines in the
//! same session, so variables, functions and loaded models persist, and an
//! error in one line loses none of them.

use super::api::{self, Shared};
use super::errors::describe;
use crate::runtime::Runtime;
use candle_core::Device;
use rhai::{Dynamic, Engine, Scope, AST};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    pub budget: Option<u64>,
    pub model_roots: Vec<PathBuf>,
    pub out_dir: Option<PathBuf>,
}

/// `import "x"` looks in the script's own directory first, then in the
/// current directory (so `import "stdlib/wan22"` works from a checkout), then
/// in `$BATON_STDLIB`. Rhai's file resolver alone only looks beside the
/// importing file.
fn module_resolver(script_dir: Option<&Path>) -> SearchPath {
    let mut dirs: Vec<PathBuf> = script_dir.map(Path::to_path_buf).into_iter().collect();
    dirs.push(PathBuf::from("."));
    if let Some(d) = std::env::var_os("BATON_STDLIB") {
        dirs.push(PathBuf::from(d));
    }
    SearchPath {
        dirs,
        files: rhai::module_resolvers::FileModuleResolver::new(),
    }
}

struct SearchPath {
    dirs: Vec<PathBuf>,
    files: rhai::module_resolvers::FileModuleResolver,
}

impl rhai::ModuleResolver for SearchPath {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: rhai::Position,
    ) -> Result<rhai::Shared<rhai::Module>, Box<rhai::EvalAltResult>> {
        for dir in &self.dirs {
            let base = dir.join(path);
            if base.with_extension("rhai").is_file() {
                let base = base.to_string_lossy();
                return self.files.resolve(engine, None, &base, pos);
            }
        }
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        Err(rhai::EvalAltResult::ErrorModuleNotFound(
            format!("{path} (searched {})", dirs.join(", ")),
            pos,
        )
        .into())
    }
}

pub struct Session {
    pub engine: Engine,
    pub scope: Scope<'static>,
    pub runtime: Shared,
    /// Functions defined so far (kept across REPL lines).
    functions: AST,
}

impl Session {
    pub fn new(cfg: &SessionConfig) -> Self {
        let mut rt = Runtime::new(Device::Cpu, cfg.budget);
        if !cfg.model_roots.is_empty() {
            rt.model_roots = cfg.model_roots.clone();
        }
        if let Ok(extra) = std::env::var("BATON_MODELS") {
            rt.model_roots.extend(std::env::split_paths(&extra));
        }
        if let Some(out) = &cfg.out_dir {
            rt.out_dir = out.clone();
        }
        let runtime: Shared = Rc::new(RefCell::new(rt));
        let mut engine = Engine::new();
        engine.set_max_expr_depths(256, 256);
        engine.on_print(|s| println!("{s}"));
        engine.on_debug(|s, src, pos| match (src, pos.line()) {
            (Some(src), Some(l)) => eprintln!("[{src}:{l}] {s}"),
            _ => eprintln!("{s}"),
        });
        api::register_all(&mut engine, &runtime);
        engine.set_module_resolver(module_resolver(None));
        Self {
            engine,
            scope: Scope::new(),
            runtime,
            functions: AST::empty(),
        }
    }

    /// Runs a script file; errors come back as `file:line:col: message`.
    pub fn run_file(&mut self, path: &Path) -> Result<Dynamic, String> {
        let code = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read script {}: {e}", path.display()))?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        self.engine.set_module_resolver(module_resolver(Some(dir)));
        self.eval(&code, &path.display().to_string())
    }

    /// Evaluates code in the persistent scope; functions it defines are kept.
    pub fn eval(&mut self, code: &str, source: &str) -> Result<Dynamic, String> {
        let mut ast = self
            .engine
            .compile_with_scope(&self.scope, code)
            .map_err(|e| {
                let pos = e.position();
                match (pos.line(), pos.position()) {
                    (Some(l), Some(c)) => {
                        format!("{source}:{l}:{c}: syntax error: {}", e.err_type())
                    }
                    _ => format!("{source}: syntax error: {}", e.err_type()),
                }
            })?;
        ast.set_source(source);
        let mut combined = self.functions.merge(&ast);
        combined.set_source(source);
        let result = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut self.scope, &combined)
            .map_err(|e| describe(&e, source));
        let mut fns = combined;
        fns.clear_statements();
        self.functions = fns;
        result
    }
}
