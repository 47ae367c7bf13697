#!/usr/bin/env node
// Writes the generated blocks (support matrix, error codes) into README.md and docs/.
import { readFileSync, writeFileSync } from 'node:fs';
const { GENERATED, replaceBlock } = await import('../dist/src/docs.js');
for (const [name, { file, render }] of Object.entries(GENERATED)) {
  const text = readFileSync(file, 'utf8');
  const next = replaceBlock(text, name, render());
  if (next !== text) {
    writeFileSync(file, next);
    console.log(`updated ${name} in ${file}`);
  }
}
