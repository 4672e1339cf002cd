/*
 * File, network, credential and other syscalls, appended to program.c by source.py (which
 * defines TRACE_<name> for the ones to attach). a[0..5] are the syscall's arguments in
 * order; .v lists the integer slots in the order decode.py's LAYOUTS names them. Integer
 * arguments are cast to their C type first: the upper half of a register holding an int is
 * not guaranteed to be a sign extension.
 */

#define EINPROGRESS 115

/* ---- files ------------------------------------------------------------------------------- */

/* Whether an open of the path at src must be reported. With PATH_FILTER, path_tests() is
 * generated from the rules (pathfilter.py): a normal-form absolute path that passes none of
 * them cannot match any rule and is dropped here. Everything the tests cannot judge goes on:
 * a path that may name a directory used later as a dirfd (O_DIRECTORY, O_PATH), relative
 * paths (their directory is not known here), paths with "//", "." or ".." components or a
 * trailing slash (the rules see them normalised), unreadable and long ones. */
#ifdef PATH_FILTER
#define PF_MAX 256
#define PF_MASK (PF_MAX - 1)
#define O_DIRECTORY 0200000   /* uapi, x86_64 */
#define O_PATH 010000000

static __always_inline bool path_tests(const char *p, u32 len, u32 slash);

static __always_inline bool open_wanted(u64 src, u64 flags)
{
    if (flags & (O_DIRECTORY | O_PATH))
        return true;
    int zero = 0;
    struct event *e = scratch.lookup(&zero);
    if (!e)
        return true;
    char *p = e->data;
    long n = bpf_probe_read_user_str(p, PF_MAX, (void *)src);
    if (n < 2 || n >= PF_MAX || p[0] != '/')
        return true;
    /* The last slash is kept in memory, not a register: a register the verifier tracks
     * exactly would make every iteration a new state, and the loop too long to verify. */
    volatile u64 *slash_at = &e->arg[5];
    *slash_at = 0;
    u32 len = n - 1;
    /* Hide len's range from the compiler, or it drops the loop's own bound as implied by
     * i < len, and the verifier, which cannot see that, finds the loop unbounded. */
    asm volatile("" : "+r"(len));
    for (u32 i = 1; i < PF_MAX - 1; i++) {
        if (i >= len)
            break;
        char c = p[i], before = p[i - 1];
        if (c == '/') {
            if (before == '/')
                return true;
            *slash_at = i;
        } else if (c == '.' && before == '/') {
            char next = p[(i + 1) & DATA_MASK];
            if (next == '/' || next == 0 ||
                (next == '.' && (p[(i + 2) & DATA_MASK] == '/' || p[(i + 2) & DATA_MASK] == 0)))
                return true;
        }
    }
    u32 slash = *slash_at & PF_MASK;
    if (slash == len - 1)
        return true;
    return path_tests(p, len, slash);
}
#else
static __always_inline bool open_wanted(u64 src, u64 flags) { return true; }
#endif

#ifdef TRACE_open
SYSCALL_EXIT(open)   /* flags, mode; name */
{
    if (!open_wanted(a[0], a[1]))
        return 0;
    return emit(K_open, ret, (struct out){.v = {(u32)a[1], (u32)a[2]}, .str = {a[0]}, .nstr = 1,
                                          .ret_fd = true});
}
#endif

#ifdef TRACE_creat
SYSCALL_EXIT(creat)   /* mode; name */
{
    return emit(K_creat, ret, (struct out){.v = {(u32)a[1]}, .str = {a[0]}, .nstr = 1,
                                           .ret_fd = true});
}
#endif

#ifdef TRACE_openat
SYSCALL_EXIT(openat)   /* dirfd, flags, mode; name */
{
    if (!open_wanted(a[1], a[2]))
        return 0;
    return emit(K_openat, ret, (struct out){
        .v = {(s32)a[0], (u32)a[2], (u32)a[3]}, .str = {a[1]}, .nstr = 1,
        .ret_fd = true, .fds = FD_SLOT(0)});
}
#endif

#ifdef TRACE_openat2
SYSCALL_EXIT(openat2)   /* dirfd, flags, mode, resolve; name */
{
    struct { u64 flags, mode, resolve; } how = {};   /* struct open_how, uapi */
    bpf_probe_read_user(&how, sizeof(how), (void *)a[2]);
    if (!open_wanted(a[1], how.flags))
        return 0;
    return emit(K_openat2, ret, (struct out){
        .v = {(s32)a[0], how.flags, how.mode, how.resolve}, .str = {a[1]}, .nstr = 1,
        .ret_fd = true, .fds = FD_SLOT(0)});
}
#endif

#ifdef TRACE_memfd_create
SYSCALL_EXIT(memfd_create)   /* flags; name */
{
    return emit(K_memfd_create, ret, (struct out){.v = {(u32)a[1]}, .str = {a[0]}, .nstr = 1,
                                                  .ret_fd = true});
}
#endif

#ifdef TRACE_close
SYSCALL_EXIT(close)
{
#ifdef FILTER_CLOSE
    if (!release_fd((s32)a[0]))
        return 0;
#endif
    return emit(K_close, ret, (struct out){.v = {(s32)a[0]}});
}
#endif

#ifdef TRACE_dup
SYSCALL_EXIT(dup)
{
    return emit(K_dup, ret, (struct out){.v = {(s32)a[0]}, .ret_fd = true, .fds = FD_SLOT(0)});
}
#endif

#ifdef TRACE_dup2
SYSCALL_EXIT(dup2)
{
    return emit(K_dup2, ret, (struct out){
        .v = {(s32)a[0], (s32)a[1]}, .fds = FD_SLOT(0) | FD_SLOT(1)});
}
#endif

#ifdef TRACE_dup3
SYSCALL_EXIT(dup3)
{
    return emit(K_dup3, ret, (struct out){
        .v = {(s32)a[0], (s32)a[1], (u32)a[2]}, .fds = FD_SLOT(0) | FD_SLOT(1)});
}
#endif

#ifdef TRACE_symlink
SYSCALL_EXIT(symlink)   /* target, linkpath */
{
    return emit(K_symlink, ret, (struct out){.str = {a[0], a[1]}, .nstr = 2});
}
#endif

#ifdef TRACE_symlinkat
SYSCALL_EXIT(symlinkat)   /* linkdirfd; target, linkpath */
{
    return emit(K_symlinkat, ret, (struct out){
        .v = {(s32)a[1]}, .str = {a[0], a[2]}, .nstr = 2, .fds = FD_SLOT(0)});
}
#endif

#ifdef TRACE_link
SYSCALL_EXIT(link)   /* oldpath, newpath */
{
    return emit(K_link, ret, (struct out){.str = {a[0], a[1]}, .nstr = 2});
}
#endif

#ifdef TRACE_linkat
SYSCALL_EXIT(linkat)   /* olddir, newdir, flags; oldpath, newpath */
{
    return emit(K_linkat, ret, (struct out){
        .v = {(s32)a[0], (s32)a[2], (u32)a[4]}, .str = {a[1], a[3]}, .nstr = 2,
        .fds = FD_SLOT(0) | FD_SLOT(1)});
}
#endif

#ifdef TRACE_chdir
SYSCALL_EXIT(chdir) { return emit(K_chdir, ret, (struct out){.str = {a[0]}, .nstr = 1}); }
#endif

#ifdef TRACE_fchdir
SYSCALL_EXIT(fchdir)
{
    return emit(K_fchdir, ret, (struct out){.v = {(s32)a[0]}, .fds = FD_SLOT(0)});
}
#endif

/* ---- network ----------------------------------------------------------------------------- */

#ifdef TRACE_socket
SYSCALL_EXIT(socket)   /* domain, type, proto */
{
    return emit(K_socket, ret, (struct out){
        .v = {(u32)a[0], (u32)a[1], (u32)a[2]}, .ret_fd = true});
}
#endif

#ifdef TRACE_bind
SYSCALL_EXIT(bind)   /* fd; addr */
{
    return emit(K_bind, ret, (struct out){
        .v = {(s32)a[0]}, .addr = a[1], .addrlen = (u32)a[2], .fds = FD_SLOT(0)});
}
#endif

/* The local end is read only once the call succeeded: the fd is then surely a socket. */
#ifdef TRACE_connect
SYSCALL_EXIT(connect)   /* fd; addr (the peer), local */
{
    return emit(K_connect, ret, (struct out){
        .v = {(s32)a[0]}, .addr = a[1], .addrlen = (u32)a[2],
        .local = ret == 0 || ret == -EINPROGRESS, .local_fd = (s32)a[0], .fds = FD_SLOT(0)});
}
#endif

#ifdef TRACE_sendto
SYSCALL_EXIT(sendto)   /* fd, size; tuple (the destination, absent on a connected socket), local */
{
    return emit(K_sendto, ret, (struct out){
        .v = {(s32)a[0], a[2]}, .addr = a[4], .addrlen = (u32)a[5],
        .local = ret >= 0, .local_fd = (s32)a[0], .fds = FD_SLOT(0)});
}
#endif

#ifdef TRACE_sendmsg
SYSCALL_EXIT(sendmsg)   /* fd; tuple from the message's msg_name */
{
    struct { u64 name; s32 namelen; } hdr = {};   /* struct user_msghdr starts so (uapi) */
    bpf_probe_read_user(&hdr, sizeof(hdr), (void *)a[1]);
    return emit(K_sendmsg, ret, (struct out){
        .v = {(s32)a[0]}, .addr = hdr.name, .addrlen = hdr.namelen > 0 ? hdr.namelen : 0,
        .local = ret >= 0, .local_fd = (s32)a[0], .fds = FD_SLOT(0)});
}
#endif

/* The peer address accept wrote, its length in the int the caller passed a pointer to; the
 * local end from the new socket. */
static __always_inline int emit_accept(u32 kind, s64 ret, u64 *a, u64 flags)
{
    s32 len = 0;
    if (a[2])
        bpf_probe_read_user(&len, sizeof(len), (void *)a[2]);
    return emit(kind, ret, (struct out){
        .v = {flags}, .addr = a[1], .addrlen = len > 0 ? len : 0,
        .local = ret >= 0, .local_fd = ret, .ret_fd = true});
}

#ifdef TRACE_accept
SYSCALL_EXIT(accept) { return emit_accept(K_accept, ret, a, 0); }
#endif

#ifdef TRACE_accept4
SYSCALL_EXIT(accept4) { return emit_accept(K_accept4, ret, a, (u32)a[3]); }
#endif

/* ---- credentials, sessions, tracing, modules -------------------------------------------- */

#ifdef TRACE_setsid
RESULT_ONLY(setsid)
#endif

#ifdef TRACE_setuid
SYSCALL_EXIT(setuid) { return emit(K_setuid, ret, (struct out){.v = {(u32)a[0]}}); }
#endif

#ifdef TRACE_setgid
SYSCALL_EXIT(setgid) { return emit(K_setgid, ret, (struct out){.v = {(u32)a[0]}}); }
#endif

#ifdef TRACE_setreuid
SYSCALL_EXIT(setreuid) { return emit(K_setreuid, ret, (struct out){.v = {(u32)a[0], (u32)a[1]}}); }
#endif

#ifdef TRACE_setregid
SYSCALL_EXIT(setregid) { return emit(K_setregid, ret, (struct out){.v = {(u32)a[0], (u32)a[1]}}); }
#endif

#ifdef TRACE_setresuid
SYSCALL_EXIT(setresuid)
{
    return emit(K_setresuid, ret, (struct out){.v = {(u32)a[0], (u32)a[1], (u32)a[2]}});
}
#endif

#ifdef TRACE_setresgid
SYSCALL_EXIT(setresgid)
{
    return emit(K_setresgid, ret, (struct out){.v = {(u32)a[0], (u32)a[1], (u32)a[2]}});
}
#endif

#ifdef TRACE_setpgid
SYSCALL_EXIT(setpgid) { return emit(K_setpgid, ret, (struct out){.v = {(s32)a[0], (s32)a[1]}}); }
#endif

#ifdef TRACE_capset
SYSCALL_EXIT(capset)   /* the sets in force after the call, from the task's credentials */
{
    void *cred = (void *)kread((void *)bpf_get_current_task(), OFF_TASK_CRED);
    return emit(K_capset, ret, (struct out){.v = {kread(cred, OFF_CRED_CAP_EFFECTIVE),
        kread(cred, OFF_CRED_CAP_PERMITTED), kread(cred, OFF_CRED_CAP_INHERITABLE)}});
}
#endif

#ifdef TRACE_ptrace
SYSCALL_EXIT(ptrace)   /* request, pid, addr, data */
{
    return emit(K_ptrace, ret, (struct out){.v = {a[0], (s32)a[1], a[2], a[3]}});
}
#endif

#ifdef TRACE_init_module
SYSCALL_EXIT(init_module)   /* length; uargs */
{
    return emit(K_init_module, ret, (struct out){.v = {a[1]}, .str = {a[2]}, .nstr = 1});
}
#endif

#ifdef TRACE_finit_module
SYSCALL_EXIT(finit_module)   /* fd, flags; uargs */
{
    return emit(K_finit_module, ret, (struct out){
        .v = {(s32)a[0], (u32)a[2]}, .str = {a[1]}, .nstr = 1, .fds = FD_SLOT(0)});
}
#endif
