//! A raw output pointer that parallel tasks writing disjoint elements may share.

/// A raw pointer to the output that tasks writing disjoint elements may share.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: every task writes a disjoint set of elements of the output (GEMM: distinct rows or
// distinct column ranges; attention: the (query, head) rows of its own query tile and kv-head
// group), and the output outlives the parallel region that uses the pointer.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
