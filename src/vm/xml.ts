/**
 * XML for VM descriptors (OVF, libvirt, Hyper-V, XenServer's ova.xml), read safely.
 *
 * Descriptors come from anywhere, so: documents with a DTD (<!DOCTYPE) or entity declarations
 * are refused outright (no entity expansion, no external entities, no billion laughs); only
 * the five predefined entities and numeric character references are decoded; size is capped.
 * Namespace prefixes are removed on read (OVF dialects bind rasd:, vssd:, ovf: to different
 * prefixes, or to none), so codecs look elements up by their local names.
 */
import { XMLBuilder, XMLParser } from 'fast-xml-parser';
import { PolyvisorError } from '../errors.js';

export const MAX_XML_BYTES = 16 << 20;

export type XmlNode = Record<string, unknown>;

export interface ParseXmlOptions {
  /** local element names that always parse as arrays, even when they occur once */
  arrays?: readonly string[];
}

/**
 * The text of an XML file in whichever encoding its producer used: a byte-order mark says
 * UTF-8 or UTF-16 (Virtual Server and Hyper-V write UTF-16 LE with a mark); without one, a
 * document starting "<\0" or "\0<" is UTF-16 LE or BE, anything else UTF-8.
 */
export function xmlText(data: Buffer): string {
  if (data.length >= 2 && data[0] === 0xff && data[1] === 0xfe) return data.subarray(2).toString('utf16le');
  if (data.length >= 2 && data[0] === 0xfe && data[1] === 0xff) return swap16(data.subarray(2)).toString('utf16le');
  if (data.length >= 3 && data[0] === 0xef && data[1] === 0xbb && data[2] === 0xbf) return data.subarray(3).toString('utf8');
  if (data.length >= 4 && data[0] === 0x3c && data[1] === 0x00) return data.toString('utf16le');
  if (data.length >= 4 && data[0] === 0x00 && data[1] === 0x3c) return swap16(data).toString('utf16le');
  return data.toString('utf8');
}

function swap16(b: Buffer): Buffer {
  const c = Buffer.from(b.subarray(0, b.length & ~1));
  c.swap16();
  return c;
}

export function parseXml(data: Buffer | string, file: string, opts: ParseXmlOptions = {}): XmlNode {
  const text = typeof data === 'string' ? data : xmlText(data);
  if (text.length > MAX_XML_BYTES) throw new PolyvisorError('ERR_UNSUPPORTED', `XML document of ${text.length} bytes is over the ${MAX_XML_BYTES}-byte limit`, { file });
  const dtd = /<!DOCTYPE|<!ENTITY/i.exec(text);
  if (dtd) {
    throw new PolyvisorError('ERR_UNSUPPORTED', 'XML with a DTD or entity declarations is refused (no entity expansion is ever done)', { file, structure: 'XML prolog', offset: dtd.index });
  }
  const arrays = new Set(opts.arrays ?? []);
  const parser = new XMLParser({
    ignoreAttributes: false,
    attributeNamePrefix: '@',
    removeNSPrefix: true,
    processEntities: true, // the five predefined entities and &#NN; only: there is no DTD to define more
    htmlEntities: false,
    parseTagValue: false,
    parseAttributeValue: false,
    trimValues: true,
    isArray: (name) => arrays.has(name),
  });
  try {
    const v = parser.parse(text, true);
    return v as XmlNode;
  } catch (e) {
    const msg = (e as { err?: { msg?: string; line?: number } }).err;
    const detail = msg?.msg ? `${msg.msg}${msg.line ? ` (line ${msg.line})` : ''}` : (e as Error).message;
    throw new PolyvisorError('ERR_CORRUPT', `not well-formed XML: ${detail}`, { file, cause: e });
  }
}

/** Builds XML from an object tree in the parser's shape ("@name" for attributes, "#text" for text). */
export function buildXml(tree: XmlNode, opts: { declaration?: boolean } = {}): string {
  const builder = new XMLBuilder({
    ignoreAttributes: false,
    attributeNamePrefix: '@',
    format: true,
    indentBy: '  ',
    suppressEmptyNode: true,
    // attribute="true" must stay an attribute with a value: a bare name is not XML
    suppressBooleanAttributes: false,
    processEntities: true,
  });
  const body = builder.build(tree) as string;
  return (opts.declaration === false ? '' : '<?xml version="1.0" encoding="UTF-8"?>\n') + body;
}

/** Children of `node` named `name`, always as an array (absent → []). */
export function children(node: unknown, name: string): XmlNode[] {
  if (!node || typeof node !== 'object') return [];
  const v = (node as XmlNode)[name];
  if (v === undefined || v === null) return [];
  return (Array.isArray(v) ? v : [v]).map((x) => (typeof x === 'object' && x !== null ? (x as XmlNode) : ({ '#text': String(x) } as XmlNode)));
}

/** The first child named `name`, or undefined. */
export function child(node: unknown, name: string): XmlNode | undefined {
  return children(node, name)[0];
}

/** The text of `node` (an element with attributes keeps its text in "#text"). */
export function text(node: unknown): string | undefined {
  if (node === undefined || node === null) return undefined;
  if (typeof node !== 'object') return String(node);
  const t = (node as XmlNode)['#text'];
  return t === undefined ? undefined : String(t);
}

/** The text of the first child named `name`. */
export function childText(node: unknown, name: string): string | undefined {
  if (!node || typeof node !== 'object') return undefined;
  const v = (node as XmlNode)[name];
  if (v === undefined || v === null) return undefined;
  return text(Array.isArray(v) ? v[0] : v);
}

/** An attribute's value. */
export function attr(node: unknown, name: string): string | undefined {
  if (!node || typeof node !== 'object') return undefined;
  const v = (node as XmlNode)[`@${name}`];
  return v === undefined ? undefined : String(v);
}
