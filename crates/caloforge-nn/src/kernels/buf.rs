//! Activation buffers recycled through a per-thread pool.

/// An activation buffer recycled through a per-thread pool when dropped: a forward pass
/// allocates the same ~60 buffers of up to a few MB every call, and fresh pages from the
/// allocator (zeroed by the kernel) cost a quarter of the time otherwise.
pub struct Buf(Vec<f32>);

thread_local! {
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Buf {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let mut v = Self::pooled(len);
        v.clear();
        v.resize(len, 0.0);
        Buf(v)
    }

    /// `len` values left over from earlier use (zeros where the pooled buffer grows), for a
    /// caller that writes every element before reading any: saves clearing buffers of megabytes
    /// that a kernel overwrites anyway.
    pub fn overwritten(len: usize) -> Self {
        let mut v = Self::pooled(len);
        v.truncate(len);
        v.resize(len, 0.0);
        Buf(v)
    }

    /// The smallest pooled buffer that holds `len` (or a new one).
    fn pooled(len: usize) -> Vec<f32> {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            // Best fit: the smallest buffer that holds `len`.
            let i = (0..p.len())
                .filter(|&i| p[i].capacity() >= len)
                .min_by_key(|&i| p[i].capacity())?;
            Some(p.swap_remove(i))
        })
        .unwrap_or_else(|| Vec::with_capacity(len))
    }

    /// A copy of `x`.
    pub fn copy(x: &[f32]) -> Self {
        let mut b = Self::overwritten(x.len());
        b.copy_from_slice(x);
        b
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        // During thread teardown the pool may be gone: then just free.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < 64 {
                p.push(v);
            }
        });
    }
}

impl std::ops::Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Buf;

    #[test]
    fn pooled_buffers_have_the_asked_length() {
        std::thread::spawn(|| {
            let mut a = Buf::zeroed(100);
            a.iter_mut().for_each(|v| *v = 7.0);
            drop(a);
            // Reused without clearing: the right length, old values allowed.
            let b = Buf::overwritten(60);
            assert_eq!(b.len(), 60);
            drop(b);
            // A zeroed buffer from the same pool is all zeros.
            let c = Buf::zeroed(80);
            assert!(c.len() == 80 && c.iter().all(|&v| v == 0.0));
            drop(c);
            // Growing past the old length fills the new part with zeros.
            let d = Buf::overwritten(100);
            assert_eq!(d.len(), 100);
            assert!(d[80..].iter().all(|&v| v == 0.0));
        })
        .join()
        .unwrap();
    }
}
