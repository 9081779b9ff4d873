//! How much a script may do: Rhai's operation, depth and size limits, and
//! a wall-clock timeout. A recipe from a stranger must not hang the
//! machine or eat its memory through the script engine; the defaults are
//! far above what a pipeline script needs.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Rhai operations per evaluation (0: unlimited).
    pub max_operations: u64,
    /// Nested function calls (0: unlimited).
    pub max_call_depth: usize,
    /// Nesting of expressions and statements in the parser (0: unlimited).
    pub max_expr_depth: usize,
    /// Bytes in one string (0: unlimited).
    pub max_string_size: usize,
    /// Items in one array (0: unlimited).
    pub max_array_size: usize,
    /// Entries in one object map (0: unlimited).
    pub max_map_size: usize,
    /// Wall-clock time per evaluation (a file, or one REPL entry).
    pub timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 1_000_000_000,
            max_call_depth: 64,
            max_expr_depth: 256,
            max_string_size: 16 << 20,
            max_array_size: 4 << 20,
            max_map_size: 1 << 16,
            timeout: None,
        }
    }
}

impl Limits {
    /// Sets the engine's limits (the timeout is armed per evaluation).
    pub fn apply(&self, engine: &mut rhai::Engine) {
        engine.set_max_operations(self.max_operations);
        engine.set_max_call_levels(self.max_call_depth);
        engine.set_max_expr_depths(self.max_expr_depth, self.max_expr_depth);
        engine.set_max_string_size(self.max_string_size);
        engine.set_max_array_size(self.max_array_size);
        engine.set_max_map_size(self.max_map_size);
        engine.set_max_modules(1024);
    }
}
