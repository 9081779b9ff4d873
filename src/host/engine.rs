//! A scripting session: one Rhai engine, one scope, one runtime.
//!
//! `baton run` evaluates a file in a session; the REPL evaluates lines in the
//! same session, so variables, functions and loaded models persist, and an
//! error in one line loses none of them.

use super::api::params::{Params, SharedParams};
use super::api::{self, Shared, SharedPolicy};
use super::errors::describe;
use super::limits::Limits;
use super::policy::PathPolicy;
use crate::roots::ModelRoots;
use crate::runtime::cancel::{self, Stop};
use crate::runtime::Runtime;
use candle_core::Device;
use rhai::{Dynamic, Engine, Scope, AST};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    pub budget: Option<u64>,
    /// Directories searched for model files (none: `.`); the session adds
    /// `$BATON_MODELS` ([`ModelRoots::with_env`]).
    pub model_roots: Vec<PathBuf>,
    pub out_dir: Option<PathBuf>,
    /// `--allow-path`: directories scripts may also read and write.
    pub allow_paths: Vec<PathBuf>,
    pub limits: Limits,
    /// Plan instead of run: headers only, no math, no files written.
    pub dry: bool,
    /// `--set name=value`: values for the script's `param(...)` declarations.
    pub params: Vec<(String, String)>,
    /// Where models compute (`None`: the CPU).
    pub device: Option<Device>,
}

/// `import "x"` looks in the script's own directory first, then in the
/// current directory (so `import "stdlib/wan22"` works from a checkout), then
/// in `$BATON_STDLIB`. Rhai's file resolver alone only looks beside the
/// importing file. The file found must pass the read policy.
fn module_resolver(script_dir: Option<&Path>, policy: &SharedPolicy) -> SearchPath {
    let mut dirs: Vec<PathBuf> = script_dir.map(Path::to_path_buf).into_iter().collect();
    dirs.push(PathBuf::from("."));
    if let Some(d) = std::env::var_os("BATON_STDLIB") {
        dirs.push(PathBuf::from(d));
    }
    SearchPath {
        dirs,
        files: rhai::module_resolvers::FileModuleResolver::new(),
        policy: policy.clone(),
    }
}

fn bundled(
    engine: &Engine,
    path: &str,
) -> Option<Result<rhai::Shared<rhai::Module>, Box<rhai::EvalAltResult>>> {
    let name = path.strip_prefix("stdlib/").unwrap_or(path);
    let (name, src) = super::recipe::BUNDLED.iter().find(|(n, _)| *n == name)?;
    Some((|| {
        let mut ast = engine.compile(*src)?;
        ast.set_source(format!("stdlib/{name}.rhai"));
        let m = rhai::Module::eval_ast_as_new(rhai::Scope::new(), &ast, engine)?;
        Ok(m.into())
    })())
}

struct SearchPath {
    dirs: Vec<PathBuf>,
    policy: SharedPolicy,
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
        if let Some(m) = bundled(engine, path) {
            return m;
        }
        for dir in &self.dirs {
            let file = dir.join(path).with_extension("rhai");
            if file.is_file() {
                let real = self
                    .policy
                    .borrow()
                    .check_import(&file)
                    .map_err(|e| rhai::EvalAltResult::ErrorRuntime(e.into(), pos))?;
                return self
                    .files
                    .resolve(engine, None, &real.to_string_lossy(), pos);
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
    pub policy: SharedPolicy,
    /// `--set` values and the parameters the script declared.
    pub params: SharedParams,
    /// Why the last evaluation was stopped, if it was (Ctrl-C or timeout).
    pub last_stop: Option<Stop>,
    timeout: Option<std::time::Duration>,
    /// Functions defined so far (kept across REPL lines).
    functions: AST,
}

impl Session {
    pub fn new(cfg: &SessionConfig) -> Self {
        let mut rt = if cfg.dry {
            Runtime::new_dry(cfg.budget)
        } else {
            Runtime::new(cfg.device.clone().unwrap_or(Device::Cpu), cfg.budget)
        };
        rt.model_roots = ModelRoots::with_env(&cfg.model_roots);
        if let Some(out) = &cfg.out_dir {
            rt.out_dir = out.clone();
        }
        let mut policy = PathPolicy::new(rt.model_roots.dirs(), &rt.out_dir, &cfg.allow_paths);
        if let Some(d) = std::env::var_os("BATON_STDLIB") {
            policy.add_read_root(Path::new(&d));
        }
        policy.set_dry(cfg.dry);
        let policy: SharedPolicy = Rc::new(RefCell::new(policy));
        let runtime: Shared = Rc::new(RefCell::new(rt));
        let mut engine = Engine::new();
        cfg.limits.apply(&mut engine);
        engine.on_progress(|ops| {
            // Reading the clock every operation would slow loops down.
            if ops % 256 != 0 {
                return None;
            }
            cancel::check().err().map(|s| s.to_string().into())
        });
        if cfg.dry {
            // A plan prints its own table; the script's prints would show
            // figures of a run that did not happen.
            engine.on_print(|_| {});
        } else {
            engine.on_print(|s| println!("{s}"));
        }
        engine.on_debug(|s, src, pos| match (src, pos.line()) {
            (Some(src), Some(l)) => eprintln!("[{src}:{l}] {s}"),
            _ => eprintln!("{s}"),
        });
        api::register_all(&mut engine, &runtime, &policy);
        let params: SharedParams = Rc::new(RefCell::new(Params::new(&cfg.params)));
        api::params::register(&mut engine, &params);
        engine.set_module_resolver(module_resolver(None, &policy));
        Self {
            engine,
            scope: Scope::new(),
            runtime,
            policy,
            params,
            last_stop: None,
            timeout: cfg.limits.timeout,
            functions: AST::empty(),
        }
    }

    /// Names of the script functions defined so far (for completion).
    pub fn function_names(&self) -> Vec<String> {
        self.functions
            .iter_functions()
            .map(|f| f.name.to_string())
            .collect()
    }

    /// Runs a script file; errors come back as `file:line:col: message`.
    pub fn run_file(&mut self, path: &Path) -> Result<Dynamic, String> {
        let code = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read script {}: {e}", path.display()))?;
        let shown = path.display().to_string();
        super::recipe::check_set_names(&shown, &code, self.params.borrow().set_names())?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        self.policy.borrow_mut().add_read_root(dir);
        self.engine
            .set_module_resolver(module_resolver(Some(dir), &self.policy));
        self.eval(&code, &path.display().to_string())
    }

    /// Compiles a script file and keeps its functions without running its
    /// statements (`baton batch` then calls them with [`Session::call`]).
    pub fn define_file(&mut self, path: &Path) -> Result<(), String> {
        let code = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read script {}: {e}", path.display()))?;
        let source = path.display().to_string();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        self.policy.borrow_mut().add_read_root(dir);
        self.engine
            .set_module_resolver(module_resolver(Some(dir), &self.policy));
        let mut ast = self
            .engine
            .compile(&code)
            .map_err(|e| format!("{source}: syntax error: {e}"))?;
        ast.set_source(source.as_str());
        ast.clear_statements();
        self.functions = self.functions.merge(&ast);
        Ok(())
    }

    /// Whether a script function `name` taking `arity` arguments is defined.
    pub fn has_function(&self, name: &str, arity: usize) -> bool {
        self.functions
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == arity)
    }

    /// Calls a script function defined so far, under the same Ctrl-C and
    /// timeout rules as [`Session::eval`].
    pub fn call(&mut self, name: &str, args: Vec<Dynamic>) -> Result<Dynamic, String> {
        cancel::reset();
        cancel::set_timeout(self.timeout);
        self.last_stop = None;
        let source = self.functions.source().unwrap_or("script").to_string();
        let result = self
            .engine
            .call_fn_with_options::<Dynamic>(
                rhai::CallFnOptions::new().eval_ast(false),
                &mut self.scope,
                &self.functions,
                name,
                args,
            )
            .map_err(|e| describe(&e, &source));
        if result.is_err() {
            self.last_stop = cancel::check().err();
        }
        cancel::set_timeout(None);
        result
    }

    /// Evaluates code in the persistent scope; functions it defines are kept.
    /// Ctrl-C and the timeout stop it with an error, leaving the session
    /// (its variables and loaded models) as it was.
    pub fn eval(&mut self, code: &str, source: &str) -> Result<Dynamic, String> {
        cancel::reset();
        cancel::set_timeout(self.timeout);
        self.last_stop = None;
        let result = self.eval_inner(code, source);
        if result.is_err() {
            self.last_stop = cancel::check().err();
        }
        cancel::set_timeout(None);
        result
    }

    fn eval_inner(&mut self, code: &str, source: &str) -> Result<Dynamic, String> {
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
