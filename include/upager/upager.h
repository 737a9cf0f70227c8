/* SPDX-License-Identifier: MIT */
/*
 * libupager: the client side of upagerd.
 *
 * A process connects to the daemon, creates or names a segment, and attaches
 * it: the library maps the segment's memfd, registers the mapping with a
 * userfaultfd and hands that userfaultfd to the daemon, which from then on
 * serves the mapping's page faults.  Pages filled once are shared by every
 * process that attaches the segment.
 *
 * Every function returns 0 (or a count) on success and -errno on failure;
 * it also sets errno to the positive value.  Expected failures:
 *   -ENOENT   no segment of that name
 *   -EEXIST   create: the name is taken
 *   -EACCES   the segment's owner and mode do not allow it
 *   -EBUSY    delete: the segment is attached (pass UPAGER_DELETE_FORCE)
 *   -EINVAL   bad name, zero or absurd size, bad flags, a source that is
 *             not a regular file or block device
 *   -EBADF    a source fd that is not open for reading
 *   -EPERM    upager_attach_owner(): the segment has another owner
 *   -EDQUOT   the caller's user is at a limit of the daemon: its segments,
 *             their total size (create), or its attachments (attach);
 *             upager_usage() tells which
 *   -EUSERS   (connect) the caller's user has as many connections open
 *             as the daemon allows one user
 *   -EMFILE   (connect) the daemon is out of descriptors
 *   -EOPNOTSUPP  the daemon does not offer that request (an older daemon)
 *   -ECONNREFUSED / -ENOENT (connect)  no daemon listens there
 *   -EPIPE    the daemon hung up (it also closes a connection left idle,
 *             with no request and no attachment of its process, for its
 *             idle timeout: 60 s by default)
 *   -EPROTO   the daemon spoke a protocol this library does not
 */
#ifndef UPAGER_UPAGER_H
#define UPAGER_UPAGER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UPAGER_NAME_MAX 63	     /* bytes, without the NUL */
#define UPAGER_PATH_MAX 256	     /* source path as reported by stat */
#define UPAGER_STAT_PIDS 32	     /* pids listed by upager_stat() */
#define UPAGER_MAX_SIZE (1ULL << 40) /* largest segment: 1 TiB */
#define UPAGER_UNLIMITED UINT64_MAX  /* a limit that is not set */

enum upager_source_kind {
	UPAGER_SOURCE_ZERO = 0,	    /* pages never written read as zero */
	UPAGER_SOURCE_FILE = 1,	    /* a raw image file; holes and the part
				     * past its end read as zero */
	UPAGER_SOURCE_SNAPSHOT = 2, /* a snapshot: a clone's pages come
				     * from the snapshot it was made of */
	UPAGER_SOURCE_IMAGE = 3,    /* an image saved by upager_save() with
				     * --since: its pages over a base image */
};

/* What a segment is (upager_segment_info.kind). */
enum upager_segment_kind {
	UPAGER_KIND_SEGMENT = 0,  /* created: zero, a file, an image */
	UPAGER_KIND_SNAPSHOT = 1, /* read-only, cut from `parent` */
	UPAGER_KIND_CLONE = 2,	  /* writable, made of snapshot `parent` */
};

struct upager;		  /* a connection to the daemon */
struct upager_attachment; /* one mapping of one segment */

struct upager_create_opts {
	uint64_t size; /* bytes, > 0, <= UPAGER_MAX_SIZE; rounded up
			* to the page size.  Over an image
			* (upager_save()): 0 takes its size, and
			* more than its size is -EINVAL */
	int source_fd; /* -1: zero source; else an open, readable fd
			* of a regular file (the library sends the
			* fd, not a path: the daemon reads what the
			* caller could read) */
	uint32_t mode; /* permission bits (0..0777); 0 means 0600 */
};

/* Fixed-width: it travels on the wire as it is. */
struct upager_segment_info {
	char name[UPAGER_NAME_MAX + 1];
	char source_path[UPAGER_PATH_MAX]; /* "" for a zero source */
	uint64_t id;
	uint64_t size; /* bytes */
	uint32_t page_size;
	uint32_t source;	 /* enum upager_source_kind */
	uint32_t uid;		 /* owner */
	uint32_t mode;		 /* permission bits */
	uint64_t faults_missing; /* faults served, by kind */
	uint64_t faults_wp;
	uint64_t faults_minor;
	uint64_t faults_waited;	      /* faults that found the page being
				       * filled by another and waited */
	uint64_t pages_filled;	      /* pages put into the memfd */
	uint64_t bytes_read;	      /* bytes read from the source */
	uint64_t resident_bytes;      /* memory the memfd holds */
	uint64_t readahead_max_pages; /* largest read-ahead window used */
	uint64_t readahead_pages;     /* pages filled ahead of any fault
				       * (asynchronous read-ahead) */
	uint64_t readahead_touched;   /* of those, found mapped by the
				       * process they were read for */
	uint64_t readahead_untouched; /* of those, found not mapped */
	uint32_t nr_attachments;
	uint32_t nr_pids;		 /* entries used in pids[] */
	uint32_t pids[UPAGER_STAT_PIDS]; /* attached processes; 0 = a
					  * forked child not yet
					  * identified */
	/* Snapshots and clones */
	char parent[UPAGER_NAME_MAX + 1]; /* snapshot: the segment it was
					   * cut from; clone: the snapshot
					   * it was made of; "" otherwise
					   * (or when that one is deleted) */
	uint32_t kind;			  /* enum upager_segment_kind */
	uint32_t nr_snapshots;		  /* live snapshots cut from it */
	uint32_t nr_clones;		  /* clones made of it (snapshot) */
	uint32_t reserved;
	uint64_t cut_ns;	/* snapshot: when it was cut (CLOCK_REALTIME) */
	uint64_t pages_shared;	/* snapshot: pages still the parent's
				 * frame; segment: pages a snapshot still
				 * shares (write-protected) */
	uint64_t pages_private; /* snapshot: pages with a frame of its own
				 * (copied before write, or on read) */
	uint64_t pages_cbw;	/* copies before write: a snapshot, the
				 * pages copied into it; a segment, the
				 * writes that copied a page out first */
	uint64_t allocated_bytes; /* memory its memfd really holds (its
				   * allocated blocks) */
};

struct upager_daemon_stats {
	uint64_t uptime_ns;
	uint64_t segments;
	uint64_t attachments;
	uint64_t connections;
	uint64_t threads;
	uint64_t faults_missing;
	uint64_t faults_wp;
	uint64_t faults_minor;
	uint64_t faults_waited;
	uint64_t pages_filled;
	uint64_t bytes_read;
	uint64_t resident_bytes;
	uint64_t events_fork;
	uint64_t events_remap;
	uint64_t events_remove;
	uint64_t events_unmap;
	uint64_t clients_exited;  /* attachments dropped as their
				   * process exited */
	uint64_t protocol_errors; /* clients dropped for garbage */
	uint64_t readahead_pages; /* sums of the segments' */
	uint64_t readahead_touched;
	uint64_t readahead_untouched;
	uint64_t uffd_reads;	   /* read()s on clients' userfaultfds */
	uint64_t uffd_reads_empty; /* of those, finding no message */
	uint64_t home_moves;	   /* a userfaultfd's home worker moved
				    * to another CPU's */
	uint64_t pollers_added;	   /* a userfaultfd polled by one more
				    * worker */
	uint64_t segments_created; /* since start: created, snapshots,
				    * clones */
};

/* The daemon's limits do not apply to this user (root, or the daemon's
 * own, by default). */
#define UPAGER_USAGE_EXEMPT 0x1u

/*
 * What one user holds of the daemon, and the daemon's limits for that user
 * (UPAGER_UNLIMITED: none).  Fixed-width: it travels on the wire as it is.
 *
 * A segment counts against its owner from its create until its memory is
 * gone: it outlives the processes that created it, and after a delete it
 * counts until its last attachment goes.  bytes is the sum of the sizes
 * (what the segments may come to hold, and what is limited); resident_bytes
 * what their memory holds now.
 */
struct upager_usage {
	uint32_t uid;
	uint32_t flags; /* UPAGER_USAGE_EXEMPT */
	uint64_t segments;
	uint64_t bytes;
	uint64_t resident_bytes;
	uint64_t connections;
	uint64_t attachments;
	uint64_t max_segments;
	uint64_t max_bytes;
	uint64_t max_connections;
	uint64_t max_attachments;
	uint64_t idle_timeout_ms; /* an idle connection is closed after
				   * this (the same for everyone);
				   * 0: never */
};

/*
 * upager_socket_path - the daemon's socket path when none is given
 * @buf, @len: where to put it
 *
 * $UPAGER_SOCKET, else $XDG_RUNTIME_DIR/upager.sock, else
 * /run/upager/upager.sock for root and /tmp/upager-$UID.sock for others.
 * Returns the length, or -ENAMETOOLONG.
 */
int upager_socket_path(char *buf, size_t len);

/*
 * upager_connect - connect to the daemon
 * @socket_path: NULL for upager_socket_path()
 * @out: the connection on success
 *
 * Checks that the peer runs as root or as the caller's uid, and negotiates
 * the protocol version.  Returns 0 or -errno.
 */
int upager_connect(const char *socket_path, struct upager **out);

/*
 * upager_disconnect - detach every attachment made through @u and close it.
 * Accepts NULL.
 */
void upager_disconnect(struct upager *u);

/* upager_create - create segment @name.  Returns 0 or -errno. */
int upager_create(struct upager *u, const char *name,
		  const struct upager_create_opts *opts);

/* Delete even while attached: the name goes now, the frames when the last
 * attachment does. */
#define UPAGER_DELETE_FORCE 0x1u
/* Delete when nothing is attached: now, or when the last attachment goes
 * (the name stays until then, for whoever attaches it meanwhile). */
#define UPAGER_DELETE_UNUSED 0x2u

/* upager_delete - delete segment @name.  Returns 0 or -errno. */
int upager_delete(struct upager *u, const char *name, unsigned int flags);

/* upager_stat - describe segment @name.  Returns 0 or -errno. */
int upager_stat(struct upager *u, const char *name,
		struct upager_segment_info *info);

/*
 * upager_list - describe every segment the caller may see
 * @infos: room for @max entries (may be NULL when @max is 0)
 *
 * Returns the number of segments (which may exceed @max; only @max are
 * filled), or -errno.
 */
int upager_list(struct upager *u, struct upager_segment_info *infos, size_t max);

/* upager_stats - daemon-wide counters.  Returns 0 or -errno. */
int upager_stats(struct upager *u, struct upager_daemon_stats *st);

/*
 * upager_usage - what users hold of the daemon, and their limits
 * @out: room for @max records (may be NULL when @max is 0)
 *
 * Root gets a record for every user that holds anything, and its own;
 * anyone else gets exactly one, their own (all zeros but the limits when
 * they hold nothing).  Sorted by uid.  Returns the number of records
 * (which may exceed @max; only @max are filled), or -errno
 * (-EOPNOTSUPP from a daemon without per-user limits).
 */
int upager_usage(struct upager *u, struct upager_usage *out, size_t max);

/*
 * upager_daemon_pid - the pid of the daemon @u is connected to (from the
 * socket's credentials at connect: the process that listens, which for a
 * daemon started without --foreground is the one that detached), or
 * -errno: -EINVAL for no handle, -ECHILD for one a forked child inherited.
 */
pid_t upager_daemon_pid(struct upager *u);

/* Map PROT_READ; needs read permission only. */
#define UPAGER_ATTACH_RDONLY 0x1u
/*
 * A snapshot, mapped MAP_PRIVATE read-write: the process reads the
 * snapshot's frames, shared with every other process that maps it, and
 * gets a page of its own the first time it writes one (the kernel's copy
 * on write).  Its writes are seen by nobody else and go with the mapping.
 * Needs read permission only; refused (-EINVAL) for anything but a
 * snapshot.
 */
#define UPAGER_ATTACH_PRIVATE 0x2u

/*
 * Not inherited by fork() children (the mapping is MADV_DONTFORK): the
 * child has nothing mapped there, as the kernel does for MADV_DONTFORK.
 */
#define UPAGER_ATTACH_DONTFORK 0x4u

/*
 * upager_attach - map segment @name into this process
 * @flags: 0 (shared, read-write) or UPAGER_ATTACH_RDONLY, or
 *         UPAGER_ATTACH_PRIVATE; with UPAGER_ATTACH_DONTFORK
 * @out: the attachment on success
 *
 * The whole segment is mapped MAP_SHARED at an address the kernel picks;
 * upager_attachment_addr() tells where.  Its pages are filled on first
 * touch by the daemon.  The mapping is inherited by fork() children, whose
 * faults the daemon serves too.  Returns 0 or -errno.
 */
int upager_attach(struct upager *u, const char *name, unsigned int flags,
		  struct upager_attachment **out);

/*
 * upager_attach_owner - upager_attach(), only if @owner_uid owns @name
 *
 * Segment names are one namespace for every user of the daemon, like
 * /dev/shm: anybody may create a name first.  A program that expects a
 * segment made by a certain user (itself, a service) says so here, and a
 * segment of that name owned by anybody else is refused with -EPERM,
 * never mapped.  Stat then attach is no substitute: the name can change
 * hands between the two; the owner is checked in the attach itself.
 * Returns 0 or -errno (-EOPNOTSUPP from a daemon that cannot check).
 */
int upager_attach_owner(struct upager *u, const char *name, unsigned int flags,
			uint32_t owner_uid, struct upager_attachment **out);

/*
 * upager_attach_at - upager_attach() at @addr (page-aligned, not NULL),
 * with MAP_FIXED's semantics: whatever this process mapped over
 * [@addr, @addr + the segment's size) is replaced.  On failure that range
 * may hold a PROT_NONE anonymous mapping (a reservation, never a hole
 * another thread's mmap could take), or what it held before.
 * Returns 0 or -errno.
 */
int upager_attach_at(struct upager *u, const char *name, unsigned int flags,
		     void *addr, struct upager_attachment **out);

void *upager_attachment_addr(const struct upager_attachment *a);
size_t upager_attachment_size(const struct upager_attachment *a);

/*
 * upager_detach - unmap @a and tell the daemon.  Accepts NULL.
 * Returns 0 or -errno (the mapping is gone either way).
 */
int upager_detach(struct upager_attachment *a);

/* Human-readable name of a source kind ("zero", "file", "snapshot"). */
const char *upager_source_name(uint32_t kind);

/* What a snapshot's cut took. */
struct upager_snapshot_result {
	uint64_t cut_ns;       /* from the request to the release of the
				* writers held */
	uint64_t protect_ns;   /* of that, write-protecting every
				* attachment */
	uint64_t max_hold_ns;  /* the longest a writer waited (0: none),
				* at most: from when its attachment's
				* protection began (or the write was
				* read, if later) to the release */
	uint64_t writers_held; /* writes held during the cut */
	uint64_t pages_shared; /* pages present at the cut: the
				* snapshot shares their frames */
	uint64_t attachments;  /* attachments write-protected */
};

/*
 * upager_snapshot - cut snapshot @snap of segment @name, now
 * @res: what the cut took (may be NULL)
 * A consistent cut across every process attached to @name, taken without
 * stopping them: every write that completed before the cut is in the
 * snapshot, none after it.  Only a thread that writes a page during the
 * cut waits, until the cut is recorded; readers never do.  The snapshot
 * is a read-only segment named @snap (the caller owns it; @name's mode),
 * attachable UPAGER_ATTACH_RDONLY or UPAGER_ATTACH_PRIVATE.  After the
 * cut, the first write to a page it shares copies the page into it first.
 * Returns 0 or -errno: -ENOENT (@name), -EEXIST (@snap), -EACCES (the
 * caller may not read @name), -EINVAL (@name is a snapshot),
 * -EOPNOTSUPP (an attachment of @name cannot be write-protected).
 */
int upager_snapshot(struct upager *u, const char *name, const char *snap,
		    struct upager_snapshot_result *res);

/*
 * upager_clone - make @name, a writable segment whose pages come from
 * snapshot @snap until they are written
 * @mode: permission bits; 0 means 0600
 * Returns 0 or -errno: -ENOENT, -EEXIST, -EINVAL (@snap is not a
 * snapshot), -EACCES, -EDQUOT.  A snapshot with clones can be deleted
 * only with UPAGER_DELETE_FORCE (-EBUSY otherwise): its frames then stay
 * until its last clone goes.
 */
int upager_clone(struct upager *u, const char *snap, const char *name,
		 uint32_t mode);

/* What a save wrote. */
struct upager_save_result {
	uint64_t pages;	     /* pages in the image (written or holes) */
	uint64_t pages_data; /* pages written as data */
	uint64_t bytes_written;
	uint64_t ns;
	uint64_t image_id; /* this image's identity */
	uint64_t base_id;  /* --since: the image it goes on top of */
};

/*
 * upager_save - write segment or snapshot @name to @fd, an image file
 * @since: NULL for a full image; else an older snapshot of the same
 *         segment as @name (a snapshot), and only the pages that differ
 *         between the two are written: an image to restore on top of
 *         the image saved of @since (upager_create_image())
 * @res: what was written (may be NULL)
 * A full image is the segment's bytes, zero pages as holes, followed by a
 * trailer; restored with a segment of source @fd.  A live segment is saved
 * through a snapshot of it, so its writers go on.  @fd must be open for
 * writing; it is truncated (and truncated to nothing again if the save
 * fails).  The call waits for the whole save, without the connection's
 * timeout ($UPAGER_TIMEOUT_MS); the daemon serves other requests
 * meanwhile.  Returns 0 or -errno: -ENOENT, -EACCES,
 * -EINVAL (@since not an older snapshot of the same segment, or @fd not
 * a regular file), -EBADF (@fd not open for writing), -EIO/-ENOSPC
 * (writing the image).
 */
int upager_save(struct upager *u, const char *name, int fd, const char *since,
		struct upager_save_result *res);

/*
 * upager_create_image - create @name from an incremental image
 * (@opts->source_fd, saved with @since) laid over @base_fd, the image it
 * was saved on top of.  Pages come in as they are touched: from the
 * incremental image where it has them, from the base otherwise.
 * @opts->size 0 takes the image's size.  Returns 0 or -errno: -EINVAL
 * (not an upager image), -EXDEV (@base_fd is not the image it was saved
 * on top of), and those of upager_create().
 */
int upager_create_image(struct upager *u, const char *name,
			const struct upager_create_opts *opts, int base_fd);

#ifdef __cplusplus
}
#endif

#endif
