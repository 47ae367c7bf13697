// PLACEHOLDER: being written by a helper; replace this whole file.
import type { DiskFormat } from '../format.js';
import { raw } from './raw.js';
export const vhd: DiskFormat = { ...raw, name: 'vhd', aliases: [], probe: () => 0 };
