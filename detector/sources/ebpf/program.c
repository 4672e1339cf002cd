/*
 * Lanner's kernel side: one event per traced syscall, emitted at its exit, plus process
 * fork, exec and exit from the sched tracepoints.
 *
 * source.py compiles this with -D flags: RING_PAGES, a K_<kind> number per event kind,
 * TRACE_<syscall> for each syscall to trace, REG_* indexes of the saved user registers and
 * OFF_* struct offsets, both from the running kernel's BTF. Only tracepoints are used and
 * only those compiled in get attached, so an untraced syscall costs nothing.
 *
 * Syscalls have no entry probes (execveat aside, see there). At sys_exit the task's saved
 * user registers (bpf_task_pt_regs) still hold the six syscall arguments, and user memory is
 * read from those pointers then: it is cheaper than an entry probe plus a per-thread stash,
 * and reading at exit is also what makes paths readable at all, since a string in a page the
 * process has not touched yet (a literal right after fork) cannot be read from BPF at entry
 * but has been faulted in by the kernel's own copy at exit. The price is the usual exit-side
 * race: another thread may rewrite the buffer between the kernel's copy and this read.
 *
 * Kernel structs are never dereferenced through the compile-time headers, which may belong to
 * another kernel; the fields read (creds, argv area, tty, loginuid, pids, exe file, socket
 * addresses, exit code) go through offsets measured from /sys/kernel/btf/vmlinux.
 */

#define EVENT_SIZE 16384   /* a power of two, so a mask bounds the output length */
#define DATA_MASK 8191     /* string offsets stay below 8192: a MAX_STR read then always fits */
#define MAX_STR 4096       /* PATH_MAX */
#define ARGS_MAX 4096      /* argv bytes kept, as Falco does */
#define ARGV_MAX 32        /* argv entries followed through user pointers (failed exec only) */
#define SOCKADDR_MAX 128   /* sizeof(struct sockaddr_storage) */
#define FLAG_CLONE_THREAD 0x00010000
#define FLAG_CLONE_FILES 0x00000400
#define FLAG_CLONE_VFORK_VM 0x00004100
#define OVERLAYFS_MAGIC 0x794c7630
#define FAMILY_INET 2       /* AF_INET, AF_INET6: uapi constants */
#define FAMILY_INET6 10
#define PIDTYPE_PGID 2
#define PIDTYPE_SID 3
/* x86_64 syscall numbers (ABI), to tell which syscall a sched event happened in. */
#define NR_CLONE 56
#define NR_VFORK 58
#define NR_CLONE3 435
/* Falco's execve exit "flags" bits. */
#define EXE_UPPER_LAYER 2
#define EXE_FROM_MEMFD 4
#define EXE_LOWER_LAYER 8

struct event {
    u64 ts;            /* CLOCK_BOOTTIME ns */
    u64 cgroup;
    s64 res;
    u64 arg[6];        /* integer arguments, in the order decode.py names them */
    u32 pid, tid, uid, gid;
    u16 kind, cpu;
    u16 blob;          /* bytes of the peer's raw sockaddr, at the start of data */
    u16 local;         /* bytes of the local end's sockaddr, after it; then the strings */
    char comm[16];
    char data[EVENT_SIZE - 112];
};
_Static_assert(sizeof(struct event) == EVENT_SIZE, "header is 112 bytes");

/* What an exit probe reports besides the header: integer slots, an optional socket address
 * in user memory, when ``local`` the local end of the socket on local_fd, then nstr
 * NUL-terminated user strings. ``fds`` flags the slots that are fds (FD_SLOT), and
 * ``ret_fd`` a result that is one: the state tracker may keep an entry for each (held.c). */
struct out {
    u64 v[6];
    u64 str[2];
    u64 addr, addrlen;
    s64 local_fd;
    bool local;
    bool ret_fd;
    u8 fds;
    int nstr;
};
#define FD_SLOT(i) (1 << (i))

BPF_RINGBUF_OUTPUT(events, RING_PAGES);
BPF_PERCPU_ARRAY(scratch, struct event, 1);    /* too big for the 512-byte BPF stack */
BPF_PERCPU_ARRAY(drops, u64, N_KINDS);         /* failed ring reservations, per kind */
/* Threads inside execveat (see sys_enter_execveat). LRU: a thread killed inside the syscall
 * leaves its mark behind. Declared with the others: bcc crashes on a map declared after a
 * probe when the headers are broken, instead of reporting the error. */
BPF_TABLE("lru_hash", u32, u8, in_execveat, 1024);
/* Per process (tgid), the fds the state tracker may hold an entry for; see hold_fds. */
#define HELD_FDS 1024
#define HELD_WORDS (HELD_FDS / 64)
struct held_fds { u64 bits[HELD_WORDS]; };
BPF_TABLE("lru_hash", u32, struct held_fds, held, 16384);

static __always_inline u64 kread(const void *base, long off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

static __always_inline u32 kread32(const void *base, long off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

/* ---- closes worth reporting ----------------------------------------------------------------
 * The tracker keeps an fd table per process from the events it gets, and needs a close only
 * for an fd it has an entry for. Opens the path filter drops (syscalls.c) never give it one,
 * so with FILTER_CLOSE (close traced for the state alone, no rule asks for it) a close is
 * reported only if its fd is held: an event that could have made an entry (one naming the fd)
 * was reported since the fd's last reported close. The map entry of a process is its held
 * set; a process without one (started before us, or evicted from the LRU) holds every fd,
 * which is always safe: it only costs reports. A child starts with a copy of its parent's
 * set (its fd table is a copy), a process that shares its table without being a thread
 * (CLONE_FILES) with none. Fds from HELD_FDS up are always reported. */
/* The word of fd's bit. The empty asm hides fd's range from the compiler, which would
 * otherwise drop the mask as redundant, and the verifier needs it to bound the access. */
static __always_inline u64 *held_word(struct held_fds *h, u32 fd)
{
    asm volatile("" : "+r"(fd));
    return &h->bits[(fd >> 6) & (HELD_WORDS - 1)];
}

static __always_inline void hold_one(struct held_fds *h, s64 fd)
{
    if (fd >= 0 && fd < HELD_FDS)
        __sync_fetch_and_or(held_word(h, fd), 1ULL << (fd & 63));
}

static __always_inline void hold_fds(s64 ret_fd, u8 slots, u64 *v)
{
#ifdef FILTER_CLOSE
    if (ret_fd < 0 && !slots)
        return;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct held_fds *h = held.lookup(&tgid);
    if (!h)
        return;
    hold_one(h, ret_fd);
    for (int i = 0; i < 6; i++)
        if (slots & (1 << i))
            hold_one(h, (s32)v[i]);
#endif
}

/* Whether a close of fd is reported; it is no longer held after. */
static __always_inline bool release_fd(s64 fd)
{
    if (fd < 0 || fd >= HELD_FDS)
        return true;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct held_fds *h = held.lookup(&tgid);
    u64 mask = 1ULL << (fd & 63);
    if (!h) {
        struct held_fds all;
        __builtin_memset(&all, 0xff, sizeof(all));
        *held_word(&all, fd) = ~mask;
        held.insert(&tgid, &all);
        return true;
    }
    u64 *word = held_word(h, fd);
    if (!(*word & mask))
        return false;
    __sync_fetch_and_and(word, ~mask);
    return true;
}

/* The current syscall's arguments (a[0..5]) and number, from the saved user registers.
 * bpf_task_pt_regs gives a BTF-typed pointer, so these are plain loads (at the indexes BTF
 * gave), not probe reads: a third of the cost of reading the block. */
static __always_inline u64 syscall_args(u64 *a)
{
    u64 *regs = (u64 *)bpf_task_pt_regs(bpf_get_current_task_btf());
    a[0] = regs[REG_DI];
    a[1] = regs[REG_SI];
    a[2] = regs[REG_DX];
    a[3] = regs[REG_R10];
    a[4] = regs[REG_R8];
    a[5] = regs[REG_R9];
    return regs[REG_ORIG_AX];
}

static __always_inline void fill(struct event *e, u32 kind, s64 res)
{
    u64 id = bpf_get_current_pid_tgid();
    /* bpf_get_current_uid_gid() gives the real ids; rules want the effective ones. */
    void *cred = (void *)kread((void *)bpf_get_current_task(), OFF_TASK_CRED);
    u64 ids = kread(cred, OFF_CRED_EUID);   /* kuid_t euid; kgid_t egid; side by side */
    e->ts = bpf_ktime_get_boot_ns();
    e->cgroup = bpf_get_current_cgroup_id();
    e->res = res;
    e->pid = id >> 32;
    e->tid = id;
    e->uid = ids;
    e->gid = ids >> 32;
    e->kind = kind;
    e->cpu = bpf_get_smp_processor_id();
    e->blob = 0;
    e->local = 0;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
}

static __always_inline struct event *begin(u32 kind, s64 res)
{
    int zero = 0;
    struct event *e = scratch.lookup(&zero);
    if (e)
        fill(e, kind, res);
    return e;
}

static __always_inline void count_drop(u32 kind)
{
    u64 *n = drops.lookup(&kind);
    if (n)
        (*n)++;
}

static __always_inline int submit(struct event *e, u32 off)
{
    u32 len = (offsetof(struct event, data) + off) & (EVENT_SIZE - 1);
    /* Never wake the reader: a wakeup is an IPI, ~10 us of the traced task's time in a VM.
     * The reader polls instead (source.py). */
    if (events.ringbuf_output(e, len, BPF_RB_NO_WAKEUP))
        count_drop(e->kind);
    return 0;
}

/* Append a NUL-terminated user string; an unreadable one becomes "" so positions hold. */
static __always_inline u32 put_str(struct event *e, u32 off, u64 src)
{
    long n = bpf_probe_read_user_str(&e->data[off & DATA_MASK], MAX_STR, (void *)src);
    if (n <= 0) {
        e->data[off & DATA_MASK] = 0;
        n = 1;
    }
    return off + n;
}

/* Append the local address of the socket on ``fd`` as a sockaddr_in/in6; its length, 0 when
 * it is neither. Read from the kernel's socket: the caller never sees it. */
static __always_inline u32 put_local(struct event *e, u32 off, s64 fd)
{
    if (fd < 0)
        return 0;
    void *fdt = (void *)kread((void *)kread((void *)bpf_get_current_task(), OFF_TASK_FILES),
                              OFF_FILES_FDT);
    if (fd >= kread32(fdt, OFF_FDT_MAX_FDS))
        return 0;
    void *file = (void *)kread((void *)kread(fdt, OFF_FDT_FD), fd * sizeof(void *));
    void *sk = (void *)kread((void *)kread(file, OFF_FILE_PRIVATE_DATA), OFF_SOCKET_SK);
    struct { u16 family, port; u32 v4; u8 v6[16]; u32 scope; } sa = {};
    u32 len = 0;
    sa.family = kread32(sk, OFF_SK_FAMILY);
    sa.port = __builtin_bswap16(kread32(sk, OFF_SK_NUM));   /* skc_num is in host order */
    if (sa.family == FAMILY_INET) {
        sa.v4 = kread32(sk, OFF_SK_RCV_SADDR);
        len = 16;
    } else if (sa.family == FAMILY_INET6) {
        bpf_probe_read_kernel(sa.v6, sizeof(sa.v6), (char *)sk + OFF_SK_V6_RCV_SADDR);
        len = 28;
    }
    __builtin_memcpy(&e->data[off & DATA_MASK], &sa, sizeof(sa));
    e->local = len;
    return len;
}

static __always_inline int emit(u32 kind, s64 ret, struct out o)
{
    hold_fds(o.ret_fd ? ret : -1, o.fds, o.v);
    if (!o.addr && !o.local && !o.nstr) {
        /* Nothing variable: reserve the header in the ring and write it there, which saves
         * the copy from scratch (a third of the cost of a small event). */
        struct event *e = events.ringbuf_reserve(offsetof(struct event, data));
        if (!e) {
            count_drop(kind);
            return 0;
        }
        fill(e, kind, ret);
        __builtin_memcpy(e->arg, o.v, sizeof(o.v));
        events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
        return 0;
    }
    struct event *e = begin(kind, ret);
    if (!e)
        return 0;
    __builtin_memcpy(e->arg, o.v, sizeof(o.v));
    u64 len = o.addrlen;
    if (len > SOCKADDR_MAX)
        len = SOCKADDR_MAX;
    if (!o.addr || bpf_probe_read_user(e->data, len, (void *)o.addr))
        len = 0;
    e->blob = len;
    u32 off = len;
    if (o.local)
        off += put_local(e, off, o.local_fd);
    if (o.nstr > 0)
        off = put_str(e, off, o.str[0]);
    if (o.nstr > 1)
        off = put_str(e, off, o.str[1]);
    return submit(e, off);
}

/* The exit probe of a syscall: the body sees ``ret`` and the arguments ``a[0..5]``. */
#define SYSCALL_EXIT(name) \
static __always_inline int exit_##name(s64 ret, u64 *a); \
TRACEPOINT_PROBE(syscalls, sys_exit_##name) \
{ \
    u64 a[6]; \
    syscall_args(a); \
    return exit_##name(args->ret, a); \
} \
static __always_inline int exit_##name(s64 ret, u64 *a)

/* Syscalls traced only for their return value (no argument decoding written for them). */
#define RESULT_ONLY(name) \
TRACEPOINT_PROBE(syscalls, sys_exit_##name) { return emit(K_##name, args->ret, (struct out){}); }

/* ---- processes --------------------------------------------------------------------------- */

/* Runs in the parent before the child is first scheduled, so it precedes every child event. */
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u64 a[6];
    u64 nr = syscall_args(a);
    u64 flags = 0;   /* kernel threads and fork() */
    if (nr == NR_CLONE)
        flags = a[0];
    else if (nr == NR_CLONE3)   /* struct clone_args starts with the u64 flags (uapi) */
        bpf_probe_read_user(&flags, sizeof(flags), (void *)a[0]);
    else if (nr == NR_VFORK)
        flags = FLAG_CLONE_VFORK_VM;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
#ifdef FILTER_CLOSE
    if (!(flags & FLAG_CLONE_THREAD)) {
        u32 child = args->child_pid;
        struct held_fds *h = held.lookup(&tgid);
        if (h && !(flags & FLAG_CLONE_FILES))
            held.update(&child, h);
        else
            held.delete(&child);
    }
#endif
    return emit(K_clone, args->child_pid, (struct out){.v = {
        flags & FLAG_CLONE_THREAD ? tgid : args->child_pid, args->child_pid, flags}});
}

/* A pid as numbered in the pid namespace at ``level`` (0: the host's). */
static __always_inline u32 pid_nr(void *pid, u32 level)
{
    return kread32(pid, OFF_PID_NUMBERS + level * UPID_SIZE + OFF_UPID_NR);
}

/* What a new image's process table entry needs from the kernel, so nothing is read from /proc
 * for a process that may be gone by then: slots tty (Falco's encoding), loginuid, exe flags
 * and the three capability sets; then four u64 at the start of data: session and process
 * group ids (the host's numbers), the pid in its own namespace, the exe's inode. Returns the
 * data used. */
static __always_inline u32 exec_info(struct event *e, void *task, void *mm)
{
    void *signal = (void *)kread(task, OFF_TASK_SIGNAL);
    void *tty = (void *)kread(signal, OFF_SIGNAL_TTY);
    e->arg[0] = 0;
    if (tty) {
        void *driver = (void *)kread(tty, OFF_TTY_DRIVER);
        u32 major = kread32(driver, OFF_DRIVER_MAJOR);
        u32 minor = kread32(driver, OFF_DRIVER_MINOR_START) + kread32(tty, OFF_TTY_INDEX);
        e->arg[0] = (minor & 0xff) | (major << 8) | ((u64)(minor & ~0xffu) << 12);
    }
#ifdef OFF_TASK_LOGINUID
    e->arg[1] = (s32)kread32(task, OFF_TASK_LOGINUID);
#else
    e->arg[1] = -1;   /* a kernel without CONFIG_AUDIT has no loginuid */
#endif
    void *cred = (void *)kread(task, OFF_TASK_CRED);
    e->arg[3] = kread(cred, OFF_CRED_CAP_INHERITABLE);
    e->arg[4] = kread(cred, OFF_CRED_CAP_PERMITTED);
    e->arg[5] = kread(cred, OFF_CRED_CAP_EFFECTIVE);

    u64 *extra = (u64 *)e->data;
    void *pid = (void *)kread(task, OFF_TASK_THREAD_PID);
    extra[0] = pid_nr((void *)kread(signal, OFF_SIGNAL_PIDS + PIDTYPE_SID * 8), 0);
    extra[1] = pid_nr((void *)kread(signal, OFF_SIGNAL_PIDS + PIDTYPE_PGID * 8), 0);
    extra[2] = pid_nr(pid, kread32(pid, OFF_PID_LEVEL));
    extra[3] = 0;

    u64 flags = 0;
    void *file = mm ? (void *)kread(mm, OFF_MM_EXE_FILE) : NULL;
    if (file) {
        char name[8] = {};
        void *dentry = (void *)kread(file, OFF_FILE_DENTRY);
        bpf_probe_read_kernel(name, 6, (void *)kread(dentry, OFF_DENTRY_NAME));
        if (name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 'f' &&
            name[4] == 'd' && name[5] == ':')
            flags |= EXE_FROM_MEMFD;
        void *inode = (void *)kread(file, OFF_FILE_INODE);
        extra[3] = kread(inode, OFF_INODE_INO);
#ifdef OFF_OVL_UPPER
        /* An overlayfs file with an upper dentry was written in the container's own layer. */
        if ((u32)kread((void *)kread(inode, OFF_INODE_SB), OFF_SB_MAGIC) == OVERLAYFS_MAGIC)
            flags |= kread(inode, OFF_OVL_UPPER) ? EXE_UPPER_LAYER : EXE_LOWER_LAYER;
#endif
    }
    e->arg[2] = flags;
    return 4 * sizeof(u64);
}

#ifdef TRACE_execveat
/* The one entry probe. By sched_process_exec the saved syscall number reads execve even for
 * an execveat, so an execveat marks its thread here; sched_process_exec finds the mark under
 * old_pid, the thread's id before a non-leader's exec took over the leader's pid. */
TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    u32 tid = bpf_get_current_pid_tgid();
    u8 mark = 1;
    in_execveat.update(&tid, &mark);
    return 0;
}

static __always_inline bool take_execveat_mark(u32 tid)
{
    bool marked = in_execveat.lookup(&tid) != NULL;
    if (marked)
        in_execveat.delete(&tid);
    return marked;
}
#else
static __always_inline bool take_execveat_mark(u32 tid) { return false; }
#endif

#if defined(TRACE_execve) || defined(TRACE_execveat)
/* A successful exec is reported here, where the new image's argv is in place: the memory the
 * syscall's pointers pointed to is gone by its exit. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    struct event *e = begin(take_execveat_mark(args->old_pid) ? K_execveat : K_execve, 0);
    if (!e)
        return 0;
    void *task = (void *)bpf_get_current_task();
    void *mm = (void *)kread(task, OFF_TASK_MM);
    u32 off = exec_info(e, task, mm);
    long n = bpf_probe_read_kernel_str(&e->data[off], MAX_STR,
                                       (char *)args + (args->data_loc_filename & 0xFFFF));
    off += n > 0 ? n : 0;
    u64 start = kread(mm, OFF_MM_ARG_START);
    u64 len = kread(mm, OFF_MM_ARG_END) - start;
    if (len > ARGS_MAX)
        len = ARGS_MAX;
    if (!bpf_probe_read_user(&e->data[off & DATA_MASK], len, (void *)start))
        off += len;
    return submit(e, off);
}

/* A failed exec: the old image, and the argv the caller passed, are still there. */
static __always_inline int exec_failed(u32 kind, s64 ret, u64 filename, u64 argv_ptr)
{
    if (ret == 0)
        return 0;   /* reported by sched_process_exec */
    struct event *e = begin(kind, ret);
    if (!e)
        return 0;
    void *task = (void *)bpf_get_current_task();
    u32 off = put_str(e, exec_info(e, task, (void *)kread(task, OFF_TASK_MM)), filename);
    u32 start = off;
    const char *const *argv = (const char *const *)argv_ptr;
    for (int i = 0; i < ARGV_MAX && argv; i++) {
        const char *p = NULL;
        if (off - start >= ARGS_MAX || bpf_probe_read_user(&p, sizeof(p), &argv[i]) || !p)
            break;
        long n = bpf_probe_read_user_str(&e->data[off & DATA_MASK], MAX_STR, p);
        if (n <= 0)
            break;
        off += n;
    }
    return submit(e, off);
}
#endif

#ifdef TRACE_execve
SYSCALL_EXIT(execve) { return exec_failed(K_execve, ret, a[0], a[1]); }
#endif

#ifdef TRACE_execveat
SYSCALL_EXIT(execveat)
{
    take_execveat_mark(bpf_get_current_pid_tgid());
    return exec_failed(K_execveat, ret, a[1], a[2]);
}
#endif

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    void *task = (void *)bpf_get_current_task();
#ifdef HAVE_GROUP_DEAD
    s64 group_dead = args->group_dead;
#else
    s64 group_dead = -1;
#endif
#ifdef FILTER_CLOSE
    u64 id = bpf_get_current_pid_tgid();
    if (group_dead == 1 || (group_dead == -1 && (u32)id == id >> 32)) {
        u32 tgid = id >> 32;
        held.delete(&tgid);
    }
#endif
    return emit(K_procexit, 0, (struct out){
        .v = {kread32(task, OFF_TASK_EXIT_CODE), group_dead}});
}
