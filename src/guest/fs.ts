/**
 * GuestFs: what a guest file-system reader offers to inspection and adaptation.
 *
 * Paths are the guest's own, absolute within the file system ("/etc/fstab"). Symbolic links
 * are resolved inside the guest file system only (an absolute target starts again at this
 * file system's root, never at the host's), with a bounded number of hops, so a hostile
 * guest cannot make Polyvisor read a host file or loop for ever. Implementations: ext2/3/4
 * (ext4.ts), FAT12/16/32 (fat.ts).
 */
export type GuestFileType = 'file' | 'directory' | 'symlink' | 'other';

export interface GuestStat {
  type: GuestFileType;
  size: number;
  /** POSIX permission bits and type bits where the file system has them (ext), else a synthesised mode */
  mode: number;
  uid: number;
  gid: number;
  /** seconds since the epoch */
  mtime: number;
}

export interface GuestDirEntry {
  name: string;
  type: GuestFileType;
}

export interface WriteFileOptions {
  /** permission bits for a new file (default 0o644); an existing file keeps its own */
  mode?: number;
}

export interface GuestFs {
  /** "ext4", "ext3", "ext2", "vfat" */
  readonly type: string;
  readonly uuid?: string;
  readonly label?: string;
  readonly readOnly: boolean;
  /** follows symlinks in every component, the last one included */
  stat(path: string): Promise<GuestStat>;
  /** does not follow a symlink in the last component */
  lstat(path: string): Promise<GuestStat>;
  /** false when the path does not exist (also through a dangling link) */
  exists(path: string): Promise<boolean>;
  readdir(path: string): Promise<GuestDirEntry[]>;
  readlink(path: string): Promise<string>;
  readFile(path: string): Promise<Buffer>;
  /** creates the file or replaces its whole content */
  writeFile(path: string, data: Uint8Array, options?: WriteFileOptions): Promise<void>;
  /** writes metadata held in memory to the volume */
  flush(): Promise<void>;
}
