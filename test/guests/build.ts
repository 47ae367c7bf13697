/**
 * The tiny real Linux guest the tests boot is the product's sample guest (src/sample/guest.ts,
 * which `npm start` also boots); re-exported here so tests keep one import path.
 */
export * from '../../src/sample/guest.js';
