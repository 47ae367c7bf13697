/**
 * `disk info`: what an image is, in qemu-img info's JSON vocabulary (virtual-size,
 * actual-size, backing-filename, format-specific...) so that its users' scripts carry over.
 */
import { stat } from 'node:fs/promises';
import { chainOf } from './chain.js';
import type { BlockImage } from './image.js';

export interface ImageInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  /** bytes the file occupies on the host (allocated blocks) */
  'actual-size': number;
  /** length of the file */
  'file-length': number;
  'cluster-size'?: number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  'format-specific'?: { type: string; data: Record<string, unknown> };
}

export async function imageInfo(image: BlockImage): Promise<ImageInfo> {
  const st = await stat(image.path);
  const info: ImageInfo = {
    filename: image.path,
    format: image.format,
    'virtual-size': image.virtualSize,
    'actual-size': st.blocks * 512,
    'file-length': st.size,
  };
  if (image.format !== 'raw') info['cluster-size'] = image.clusterSize;
  if (image.backingRef) {
    info['backing-filename'] = image.backingRef.name;
    const full = image.backing?.path ?? image.backingRef.resolved;
    if (full) info['full-backing-filename'] = full;
    const fmt = image.backing?.format ?? image.backingRef.format;
    if (fmt) info['backing-filename-format'] = fmt;
  }
  const data = image.formatInfo();
  if (Object.keys(data).length > 0) info['format-specific'] = { type: image.format, data };
  return info;
}

/** Info for every image of the chain, top first (`--backing-chain`). */
export async function chainInfo(image: BlockImage): Promise<ImageInfo[]> {
  return Promise.all(chainOf(image).map(imageInfo));
}
