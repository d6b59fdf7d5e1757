// A DICOM folder as a volume: one series of uncompressed single-frame slices, sorted along the slice normal.
export async function readDicomFolder(files) {
  throw new Error(`Reading DICOM folders in the page is not available in this build (${files.length} files).`);
}
