//! Kernel types by name, from the running kernel's BTF. aya has no CO-RE for Rust programs, so
//! every struct offset a probe needs is looked up here and handed to the eBPF side at load time.

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// What a tracepoint argument is, as far as finding `write`/`success` needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    Pointer,
    Bool,
    Other,
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Opens `/sys/kernel/btf/vmlinux`, or says why vmalock cannot run without it.
    pub fn open() -> Result<Self> {
        Self::open_path(VMLINUX_BTF)
    }

    pub fn open_path(path: &str) -> Result<Self> {
        if !std::path::Path::new(path).exists() {
            bail!(
                "{path} does not exist: this kernel was built without CONFIG_DEBUG_INFO_BTF, and \
                 vmalock needs BTF to find struct offsets and attach tp_btf programs. Boot a kernel \
                 with BTF (every Debian kernel has it) or rebuild with CONFIG_DEBUG_INFO_BTF=y."
            );
        }
        let btf = Btf::from_file(path).with_context(|| format!("parsing BTF from {path}"))?;
        Ok(Self { btf })
    }

    /// The byte offset of `path` (e.g. `"mm_lock_seq.sequence"`) inside `struct name`, looking
    /// through anonymous struct/union members the way C does. `Ok(None)` when the struct exists
    /// but has no such member (a kernel version difference); an error when the struct is absent.
    pub fn member_offset(&self, name: &str, path: &str) -> Result<Option<u32>> {
        let mut ty = self.struct_named(name)?;
        let mut offset_bits = 0u32;
        for (i, part) in path.split('.').enumerate() {
            match self.find_member(&ty, part)? {
                Some((bits, member_ty)) => {
                    offset_bits += bits;
                    if i + 1 < path.split('.').count() {
                        ty = self.strip(member_ty)?;
                    }
                }
                None => return Ok(None),
            }
        }
        if !offset_bits.is_multiple_of(8) {
            bail!("{name}.{path} is a bitfield (bit offset {offset_bits}); vmalock reads whole bytes");
        }
        Ok(Some(offset_bits / 8))
    }

    /// Like [`member_offset`](Self::member_offset), but a missing member is an error naming it.
    pub fn required_offset(&self, name: &str, path: &str) -> Result<u32> {
        self.member_offset(name, path)?.ok_or_else(|| {
            anyhow!("struct {name} has no member `{path}` in this kernel's BTF; vmalock cannot read it here")
        })
    }

    /// True when the kernel has a function of this name in BTF (so fentry could target it).
    pub fn has_function(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .map(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
            .unwrap_or(false)
    }

    /// The argument types of tracepoint `tp` as a tp_btf program sees them (TP_PROTO order,
    /// without the leading `void *__data`), from its `btf_trace_<tp>` typedef. The prototype
    /// changes between kernels (6.1–6.13 pass `const char *memcg_path` after `mm`), so argument
    /// positions must come from here, never be assumed.
    pub fn tracepoint_args(&self, tp: &str) -> Result<Vec<ArgKind>> {
        let name = format!("btf_trace_{tp}");
        let td = self
            .btf
            .resolve_types_by_name(&name)
            .ok()
            .and_then(|v| v.into_iter().find(|t| matches!(t, Type::Typedef(_))))
            .ok_or_else(|| anyhow!("tracepoint {tp} has no {name} in this kernel's BTF"))?;
        let ptr = self.strip(td)?;
        let Type::Ptr(p) = ptr else { bail!("{name} is not a function pointer") };
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&p)? else {
            bail!("{name} does not point to a function prototype")
        };
        let mut out = Vec::new();
        for param in proto.parameters.iter().skip(1) {
            let ty = self.strip(self.btf.resolve_chained_type(param)?)?;
            out.push(match ty {
                Type::Int(i) if i.is_bool() => ArgKind::Bool,
                Type::Ptr(_) => ArgKind::Pointer,
                _ => ArgKind::Other,
            });
        }
        Ok(out)
    }

    /// The enumerators of `enum name`, in declaration order; `None` if the enum is absent.
    pub fn enum_values(&self, name: &str) -> Option<Vec<(String, u32)>> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.into_iter().find_map(|t| match t {
            Type::Enum(e) => Some(
                e.members
                    .iter()
                    .map(|m| (self.btf.resolve_name(m).unwrap_or_default(), m.val()))
                    .collect(),
            ),
            _ => None,
        })
    }

    /// The struct a function's parameter `idx` points to (`struct NAME *` → "NAME"), from its
    /// BTF prototype; None when the function, the parameter or a struct pointer is not there.
    /// A probe that reads an argument as a VMA checks this first: signatures change.
    pub fn param_struct(&self, func: &str, idx: usize) -> Option<String> {
        let f = self.btf.resolve_types_by_name(func).ok()?.into_iter().find(|t| matches!(t, Type::Func(_)))?;
        let Type::Func(f) = f else { return None };
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&f).ok()? else { return None };
        let param = proto.parameters.get(idx)?;
        let Type::Ptr(p) = self.strip(self.btf.resolve_chained_type(param).ok()?).ok()? else { return None };
        match self.strip(self.btf.resolve_chained_type(&p).ok()?).ok()? {
            Type::Struct(st) => self.btf.resolve_name(&st).ok(),
            _ => None,
        }
    }

    /// The value of the enumerator `name` in any enum, named or anonymous (kernel flag bits are
    /// often declared in anonymous enums, which only a scan of every type finds).
    pub fn enumerator(&self, name: &str) -> Option<u32> {
        (1u32..).map_while(|id| self.btf.resolve_type_by_id(id).ok()).find_map(|t| match t {
            Type::Enum(e) => e.members.iter().find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == name)).map(|m| m.val()),
            _ => None,
        })
    }

    fn struct_named(&self, name: &str) -> Result<Type> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| anyhow!("struct {name} is not in this kernel's BTF"))?;
        types
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(|| anyhow!("struct {name} is not in this kernel's BTF"))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, ty: Type) -> Result<Type> {
        let mut ty = ty;
        for _ in 0..16 {
            match &ty {
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::TypeTag(_) => {
                    ty = self.btf.resolve_chained_type(ty.as_btf_type().expect("qualifier is a btf type"))?;
                }
                _ => return Ok(ty),
            }
        }
        bail!("type chain too deep")
    }

    /// Finds `member` in a struct or union, descending into anonymous members.
    /// Returns its bit offset from the start of `ty` and its type.
    fn find_member(&self, ty: &Type, member: &str) -> Result<Option<(u32, Type)>> {
        let members = match ty {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => return Ok(None),
        };
        for m in members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let m_ty = self.btf.resolve_chained_type(m)?;
            if name == member {
                return Ok(Some((m.bit_offset(), m_ty)));
            }
            if name.is_empty() {
                let inner = self.strip(m_ty)?;
                if let Some((bits, t)) = self.find_member(&inner, member)? {
                    return Ok(Some((m.bit_offset() + bits, t)));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These read the BTF of the kernel the tests run on; they skip loudly where there is none.
    fn kernel() -> Option<KernelBtf> {
        match KernelBtf::open() {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("SKIPPED: {e}");
                None
            }
        }
    }

    #[test]
    fn resolves_stable_members_by_name() {
        let Some(k) = kernel() else { return };
        // task_struct.pid precedes tgid directly in every kernel since 2.6.
        let pid = k.required_offset("task_struct", "pid").unwrap();
        let tgid = k.required_offset("task_struct", "tgid").unwrap();
        assert_eq!(tgid, pid + 4);
        assert!(k.required_offset("task_struct", "start_time").unwrap() > 0);
        // vm_mm is the third pointer-sized member of vm_area_struct (after the vm_start/vm_end union).
        assert_eq!(k.required_offset("vm_area_struct", "vm_mm").unwrap(), 16);
    }

    #[test]
    fn missing_members_and_structs_are_reported_by_name() {
        let Some(k) = kernel() else { return };
        assert_eq!(k.member_offset("task_struct", "no_such_member").unwrap(), None);
        let err = k.required_offset("task_struct", "no_such_member").unwrap_err().to_string();
        assert!(err.contains("task_struct") && err.contains("no_such_member"), "{err}");
        let err = k.member_offset("no_such_struct_xyz", "a").unwrap_err().to_string();
        assert!(err.contains("no_such_struct_xyz"), "{err}");
        assert!(KernelBtf::open_path("/nonexistent/btf").err().unwrap().to_string().contains("CONFIG_DEBUG_INFO_BTF"));
    }

    #[test]
    fn tracepoint_prototypes_come_from_btf() {
        let Some(k) = kernel() else { return };
        let args = k.tracepoint_args("mmap_lock_acquire_returned").unwrap();
        assert_eq!(args[0], ArgKind::Pointer, "mm first");
        // Two bools (write, success) follow, with or without memcg_path between.
        assert_eq!(args.iter().filter(|a| **a == ArgKind::Bool).count(), 2, "{args:?}");
        assert!(k.tracepoint_args("no_such_tracepoint").unwrap_err().to_string().contains("btf_trace_no_such_tracepoint"));
    }

    #[test]
    fn parameter_struct_types_come_from_btf() {
        let Some(k) = kernel() else { return };
        assert_eq!(k.param_struct("mprotect_fixup", 2).as_deref(), Some("vm_area_struct"));
        assert_eq!(k.param_struct("mprotect_fixup", 0).as_deref(), Some("vma_iterator"));
        assert_eq!(k.param_struct("mprotect_fixup", 4), None, "an unsigned long");
        assert_eq!(k.param_struct("no_such_function_here", 0), None);
    }

    #[test]
    fn functions_and_enums() {
        let Some(k) = kernel() else { return };
        assert!(k.has_function("do_exit"));
        assert!(!k.has_function("vmalock_no_such_function"));
        let states = k.enum_values("pid_type").expect("enum pid_type");
        assert_eq!(states[0], ("PIDTYPE_PID".to_string(), 0));
    }
}
